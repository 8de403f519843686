"""CPU-only static evidence for the fast engine's decode attention: each kernel compiled for sm_90 (H100, H200) by
Triton's own toolchain (its ptxas and cuobjdump; no GPU, no driver) from a real call of the engine's launcher at
Qwen3-8B's shapes, so it is specialised as the engine's launch would be (alignment, divisible strides, the stage
count of a 132-SM card), and its loop over the cache counted in SASS instructions per element of K and V a thread
handles in one trip.

A count is how much work a launch asks of an SM's issue slots, not how fast it runs: only a GPU timing
(tools/attention_sweep.py) decides. It says which candidates are worth device time. Against an H100's timings: the
int4 launch whose loop has 27 % fewer instructions (split_nibbles: 1,183 against 1,621 a trip) ran 14 % faster at
batch 32 x 8K and 1.4 % at batch 8 (results/h100/session-2026-12-07-l/).

    python tools/sass_count.py [--batch 32] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kvcompress.engine.fast import int_kernels, kernels  # noqa: E402
from kvcompress.methods.quant_spec import spec_from_label  # noqa: E402

HQ, HKV, D = 32, 8, 128
SMS = 132  # H100 SXM and H200 alike
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


class _Hopper:
    """What Triton asks its active driver before it compiles: an sm_90 card, device 0."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextmanager
def sm90_compiles():
    """Triton kernels launched inside are compiled for sm_90 and not run; yields the list that gets
    (kernel name, CompiledKernel) for each launch. The launchers pick their stages as on a 132-SM card."""
    from triton.runtime import jit
    from triton.runtime.driver import driver

    compiled, run, active, stages = [], jit.JITFunction.run, driver._active, int_kernels.attention_stages

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel))
        return kernel

    driver.set_active(_Hopper())
    jit.JITFunction.run = compile_only
    # kernels.attention_stages' rule with a GPU's SM count (it answers 2 for any CPU tensor)
    int_kernels.attention_stages = kernels.attention_stages = lambda rows, device: 2 if rows <= SMS else 3
    forced, kernels.FORCE_TRITON = kernels.FORCE_TRITON, True
    try:
        yield compiled
    finally:
        jit.JITFunction.run = run
        driver.set_active(active)
        int_kernels.attention_stages = kernels.attention_stages = stages
        kernels.FORCE_TRITON = forced


@dataclasses.dataclass
class Loop:
    instructions: int
    ops: Counter  # opcode without its modifiers -> count


def cuobjdump(kernel, option: str) -> str:
    """cuobjdump's answer on the kernel's cubin: `-sass` its code, `-res-usage` its registers and memory."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([str(TOOLS / "cuobjdump"), option, f.name], capture_output=True, text=True,
                              check=True).stdout


def sass(kernel) -> str:
    return cuobjdump(kernel, "-sass")


def loops(text: str) -> list[Loop]:
    """Each backward branch's body (target .. branch), in address order: the kernel's loops, one trip each."""
    code = [(int(address, 16), op) for address, op in
            re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)[^;]*;", text)]
    index = {address: i for i, (address, _) in enumerate(code)}
    found = []
    for i, (address, op) in enumerate(code):
        if op.startswith("BRA"):
            line = re.search(rf"/\*{address:04x}\*/[^;]*0x([0-9a-f]+)", text)
            if line and int(line.group(1), 16) < address and int(line.group(1), 16) in index:
                body = code[index[int(line.group(1), 16)]:i + 1]
                found.append(Loop(len(body), Counter(op.split(".")[0] for _, op in body)))
    return found


def registers(kernel) -> int:
    return int(re.search(r"REG:(\d+)", cuobjdump(kernel, "-res-usage")).group(1))


@dataclasses.dataclass
class Count:
    name: str
    loop: Loop  # the loop over the cache (the int kernels: the one over the codes)
    elements: int  # K and V elements one thread handles in one trip
    registers: int
    shared: int  # bytes

    def line(self) -> str:
        top = ", ".join(f"{op} {n}" for op, n in self.loop.ops.most_common(8))
        return (f"{self.name}: {self.loop.instructions} instructions a trip, {self.loop.instructions / self.elements:.2f} an "
                f"element ({self.elements} a thread), {self.registers} registers, {self.shared / 1024:.0f} KiB shared"
                f"\n    {top}")


def count_int(spec_label: str, launch: int_kernels.AttentionLaunch, batch: int, tokens: int) -> Count:
    spec = spec_from_label(spec_label)
    layer = int_kernels.IntLayer.allocate(spec, batch, HKV, D, tokens + 256, torch.bfloat16,
                                          lambda shape, dtype: torch.empty(shape, dtype=dtype))
    q = torch.zeros(batch, HQ, D, dtype=torch.bfloat16)
    with sm90_compiles() as compiled:
        int_kernels.decode_attention(q, layer, torch.full((batch,), tokens), spec, D ** -0.5, torch.empty_like(q),
                                     1, launch)
    kernel = dict(compiled)["_int_attention_partial_kernel"]
    # the loop over the codes: the longer of the two with dots (the other reads the bf16 ring)
    dequantizing = max((loop for loop in loops(sass(kernel)) if loop.ops["HMMA"]), key=lambda loop: loop.instructions)
    return Count(f"{spec_label} {launch}", dequantizing, 2 * launch.block * D // (32 * launch.warps),
                 registers(kernel), kernel.metadata.shared)


def count_plain(fp8: bool, batch: int, tokens: int, f16_dots: bool = False) -> Count:
    """The bf16 (or fp8) cache's kernel: its longest loop (the one over the cache). `f16_dots`: the fp8 kernel's
    F16_DOTS candidate (kernels.FP8_F16_DOTS)."""
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    keys = torch.empty(batch, HKV, tokens + 256, D, dtype=dtype)
    q = torch.zeros(batch, HQ, D, dtype=torch.bfloat16)
    scales = (torch.ones(batch, 1), torch.ones(batch, 1)) if fp8 else None
    engine_choice, kernels.FP8_F16_DOTS = kernels.FP8_F16_DOTS, f16_dots
    try:
        with sm90_compiles() as compiled:
            kernels.decode_attention(q, keys, torch.empty_like(keys), torch.tensor(tokens), None, D ** -0.5,
                                     torch.empty_like(q), 1, scales=scales)
    finally:
        kernels.FP8_F16_DOTS = engine_choice
    kernel = dict(compiled)["_attention_partial_kernel"]
    loop = max(loops(sass(kernel)), key=lambda loop: loop.instructions)
    warps = kernel.metadata.num_warps
    name = ("fp8, float16 dots" if f16_dots else "fp8") if fp8 else "bf16"
    return Count(name, loop, 2 * kernels.BLOCK_N * D // (32 * warps), registers(kernel), kernel.metadata.shared)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="sequences (sets the stage count; default 32)")
    parser.add_argument("--tokens", type=int, default=8192, help="cache entries a sequence (default 8192)")
    args = parser.parse_args(argv)
    print(f"sm_90, Qwen3-8B's attention (32 query heads, 8 KV heads, dim 128), batch {args.batch} x {args.tokens}: "
          "static SASS counts of one loop trip, not timings")
    for fp8, f16_dots in ((False, False), (True, False), (True, True)):
        print(count_plain(fp8, args.batch, args.tokens, f16_dots).line())
    engine = int_kernels.LAUNCH
    for label, launch in [("int4", engine), ("int4", dataclasses.replace(engine, split_nibbles=False)),
                          ("int4", dataclasses.replace(engine, word_codes=True, interleave_groups=True)),
                          ("int2", engine)]:
        print(count_int(label, launch, args.batch, args.tokens).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
