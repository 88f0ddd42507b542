"""Speed of the pack's GGUF de-quantisation (PyTorch) against the gguf package's numpy reference, per type.

    python -m benchmarks.dequant_speed                      # CPU, one 3840 x 3840 weight per type
    python -m benchmarks.dequant_speed --device cuda --repeats 20

One weight of the DiT's hidden width (3840 x 3840) per GGUF type, de-quantised by
:func:`ideogram4.gguf_dequant.dequantize_gguf` to float32 and to bf16 (what the Linears use), and by
``gguf.quants.dequantize`` (numpy, float32, CPU only). Best of ``--repeats`` after one warm-up call, in CPU time
on the CPU (see :func:`timed`); run with ``--threads 1`` for a like-for-like comparison with numpy. Columns:
stored MB (the bytes read), pack milliseconds and MB of output per second for float32 and bf16, numpy
milliseconds, and how many times faster than numpy the pack's float32 path is.

On the CPU most of a float32 column is the first touch of the 59 MB output (a page fault per 4 KiB page). numpy
asks the kernel for transparent huge pages for large arrays; PyTorch does so only with
``THP_MEM_ALLOC_ENABLE=1`` in the environment, which makes the pack's float32 path about twice as fast here.

The blocks are random bytes with every fp16 scale set to a small normal value, so no value is inf, NaN or
subnormal (subnormal arithmetic would slow both sides alike on some CPUs). An nf4 row (bitsandbytes layout,
block 64) is timed for comparison; it has no numpy reference.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

if __package__ in (None, ""):
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ideogram4.gguf_dequant import GGUF_QTYPE_NAMES, dequantize_gguf, gguf_block_layout  # noqa: E402
from ideogram4.nf4 import dequantize_nf4  # noqa: E402

TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# Byte offsets of the fp16 scale fields in one block (ggml's block_* structs).
SCALE_OFFSETS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82),
                 "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
QTYPES = {name: qtype for qtype, name in GGUF_QTYPE_NAMES.items()}


def stored_weight(name: str, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, bytes per row) uint8 as a GGUF file stores a ``name`` weight of shape (rows, cols)."""
    if name in ("F32", "F16", "BF16"):
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[name]
        return torch.randn((rows, cols), generator=generator).to(dtype).view(torch.uint8)
    per_block, block_bytes = gguf_block_layout(QTYPES[name])
    blocks = torch.randint(0, 256, (rows * cols // per_block, block_bytes), dtype=torch.uint8, generator=generator)
    scale = torch.tensor([2.0 ** -10], dtype=torch.float16).view(torch.uint8)
    for offset in SCALE_OFFSETS[name]:
        blocks[:, offset:offset + 2] = scale
    return blocks.view(rows, -1)


def timed(function, device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` calls after a warm-up. On the CPU the process's CPU time (user + system, page faults
    included), which time slices lost to other programs do not inflate; on an accelerator wall time, synchronised."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    function()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = clock()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(clock() - started)
    return min(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=3840, help="the weight is size x size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (numpy's reference is single-threaded)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import gguf  # the reference; only this benchmark and the tests need it

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    shape = (args.size, args.size)
    n = args.size * args.size
    print(f"De-quantising one {args.size} x {args.size} weight on {device} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); numpy reference on the CPU, one thread. MB/s: MB of output per s;"
          f" 'view': the bytes are returned reinterpreted, nothing is computed")
    print(f"{'type':<6}{'stored MB':>10}{'f32 ms':>9}{'f32 MB/s':>10}{'bf16 ms':>9}{'bf16 MB/s':>10}"
          f"{'numpy ms':>10}{'f32 x numpy':>13}")

    def cells(call, dtype, raw_device) -> tuple[str, str, float | None]:
        if call().data_ptr() == raw_device.data_ptr():
            return "view", "view", None
        seconds = timed(call, device, args.repeats)
        return f"{seconds * 1e3:.1f}", f"{n * dtype.itemsize / 1e6 / seconds:.0f}", seconds

    for name in TYPES:
        raw = stored_weight(name, *shape, generator)
        raw_device = raw.to(device)
        qtype = QTYPES[name]
        f32_ms, f32_rate, f32 = cells(lambda: dequantize_gguf(raw_device, qtype, shape, torch.float32),
                                      torch.float32, raw_device)
        bf16_ms, bf16_rate, _ = cells(lambda: dequantize_gguf(raw_device, qtype, shape, torch.bfloat16),
                                      torch.bfloat16, raw_device)
        raw_numpy = raw.numpy()
        if name == "F16":
            raw_numpy = raw_numpy.view(np.float16)  # gguf reads F16 tensors as float16 arrays
        elif name == "F32":
            raw_numpy = raw_numpy.view(np.float32)
        reference = timed(lambda: gguf.quants.dequantize(raw_numpy, gguf.GGMLQuantizationType(qtype)),
                          torch.device("cpu"), max(1, args.repeats // 2))
        ratio = f"{reference / f32:.1f}" if f32 and reference > 1e-4 else "-"
        print(f"{name:<6}{raw.numel() / 1e6:>10.2f}{f32_ms:>9}{f32_rate:>10}{bf16_ms:>9}{bf16_rate:>10}"
              f"{reference * 1e3:>10.1f}{ratio:>13}")

    packed = torch.randint(0, 256, (n // 2, 1), dtype=torch.uint8, generator=generator).to(device)
    absmax = torch.rand(n // 64, generator=generator).to(device)
    f32_ms, f32_rate, _ = cells(lambda: dequantize_nf4(packed, absmax, shape, torch.float32), torch.float32, packed)
    bf16_ms, bf16_rate, _ = cells(lambda: dequantize_nf4(packed, absmax, shape, torch.bfloat16), torch.bfloat16,
                                  packed)
    print(f"{'nf4':<6}{n / 2e6 + absmax.numel() * 4 / 1e6:>10.2f}{f32_ms:>9}{f32_rate:>10}{bf16_ms:>9}"
          f"{bf16_rate:>10}{'-':>10}{'-':>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
