"""Where a step's time goes: torch.profiler operator table for one step of each implementation.

    python -m benchmarks.profile_step --device cpu --config small --size 512 --dtype fp32 --threads 1
    python -m benchmarks.profile_step --device cuda --config full --size 1024 --implementations pack,native

Builds the implementations exactly as benchmarks/dit_step.py does (same random weights, same calling
conventions), runs ``--warmup`` steps, profiles one step per implementation and prints the ``--top`` operators by
self time (CPU self time on a CPU, CUDA self time on a GPU) plus a summary by operator family (matmul,
attention, normalisation, elementwise, copies). ``--trace DIR`` also writes Chrome traces.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import dit_step

FAMILIES = (
    ("matmul", ("mm", "addmm", "bmm", "linear", "matmul", "gemm")),
    ("attention", ("attention", "sdpa", "flash", "softmax", "_efficient", "cudnn")),
    ("norm", ("rms_norm", "layer_norm", "rsqrt", "norm")),
    ("copy/layout", ("copy_", "contiguous", "clone", "cat", "to_copy", "_to_copy", "reshape", "permute", "transpose",
                     "index_select", "stack")),
    ("elementwise", ("mul", "add", "sub", "silu", "tanh", "neg", "cos", "sin", "pow", "mean", "exp", "div",
                     "where", "fill", "zeros", "full", "arange", "eq")),
)


def family(name: str) -> str:
    lowered = name.lower()
    for label, keys in FAMILIES:
        if any(key in lowered for key in keys):
            return label
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=sorted(dit_step.CONFIGS), default="small")
    parser.add_argument("--size", default="512")
    parser.add_argument("--dtype", choices=sorted(dit_step.DTYPES), default="fp32")
    parser.add_argument("--implementations", default="pack,native")
    parser.add_argument("--pack-variants", default="")
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--trace", default=None, help="folder for Chrome traces")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = dit_step.DTYPES[args.dtype]
    config = dit_step.CONFIGS[args.config]
    options = dit_step.parse_args(["--implementations", args.implementations, "--pack-variants", args.pack_variants,
                                   "--diffusers-text-padding", "2048", "--no-reference"])
    implementations, skipped, _ = dit_step.build_implementations(options, config, dtype, device, print)
    width, height = dit_step.parse_size(args.size)
    problem = dit_step.make_problem(config, width, height, args.text_tokens, 1, device, 100)
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    for implementation in implementations:
        runner = dit_step.Runner(implementation, problem, device)
        for _ in range(args.warmup):
            runner()
        dit_step.synchronize(device)
        with profile(activities=sorted({ProfilerActivity.CPU, activity}, key=str)) as prof:
            runner()
            dit_step.synchronize(device)
        events = prof.key_averages()
        attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        totals = collections.Counter()
        for event in events:
            totals[family(event.key)] += getattr(event, attribute, 0) or 0
        grand = sum(totals.values()) or 1
        print(f"\n=== {implementation.name} {problem.label} {args.dtype}: {grand / 1e3:.1f} ms self time")
        for label, value in totals.most_common():
            print(f"  {label:<12} {value / 1e3:9.1f} ms  {100 * value / grand:5.1f} %")
        print(events.table(sort_by=sort_key, row_limit=args.top))
        if args.trace:
            pathlib.Path(args.trace).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(pathlib.Path(args.trace) / f"{implementation.name}-{problem.label}.json"))
    for name, why in skipped.items():
        print(f"{name}: not run ({why[:200]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
