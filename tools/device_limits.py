"""GPU-only: the two limits `benchmark.py check` holds decode and prefill against (commands/checks.py GPU_LIMITS), as
measured on this GPU: HBM bandwidth (a device-to-device copy of 4 GiB, read + write counted) and bf16 matrix
throughput (8192 x 8192 x 8192 on random data). Each the median of 20 CUDA-event-timed runs after 3 warm-ups.

    python tools/device_limits.py
"""

import statistics

import torch


def seconds(fn, runs: int = 20) -> tuple[float, float, float]:
    """(median, min, max) seconds of fn over `runs` timed calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), min(times), max(times)


def copy_seconds(device: torch.device) -> tuple[float, float, float]:
    source = torch.empty(4 * 2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return seconds(lambda: target.copy_(source))


def main() -> int:
    device = torch.device("cuda")
    copy = copy_seconds(device)  # its 8 GiB of buffers are freed before the matmul's
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    matmul = seconds(lambda: a @ b)
    moved, flops = 2 * 4 * 2**30, 2 * 8192**3
    print(f"{torch.cuda.get_device_name(device)}: copy {moved / copy[0] / 1e12:.2f} TB/s (read + write; "
          f"{moved / copy[2] / 1e12:.2f}-{moved / copy[1] / 1e12:.2f}), bf16 matmul {flops / matmul[0] / 1e12:.0f} "
          f"TFLOP/s ({flops / matmul[2] / 1e12:.0f}-{flops / matmul[1] / 1e12:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
