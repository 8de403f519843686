"""The fast engine: static per-layer KV buffers, one CUDA graph per cell, Triton kernels with torch twins."""
