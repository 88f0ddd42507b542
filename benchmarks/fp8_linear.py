"""The block Linears of one step three ways: bf16 weights, fp8 weights de-quantised per call, fp8 matrix multiplies.

    python -m benchmarks.fp8_linear --device cuda --sizes 1024 2048 --json fp8.json     # GPU (gpu_run.sh phase fp8)
    python -m benchmarks.fp8_linear --device cpu --width-divisor 8 --sizes 256 --repeats 1   # smoke test on a CPU

What the DiT Loader's weight dtypes do in each of the five block Linears (``attention.qkv``, ``attention.o``,
``feed_forward.w1/w3/w2``), one layer at a time with the released widths:

* ``bf16``: ``F.linear`` on bf16 weights (weight_dtype ``bf16``; also what ``default`` does with bf16 files);
* ``fp8 de-quantised``: the fp8 weight rebuilt per call as ``weight.to(bf16) * scale.to(bf16)[:, None]`` then
  ``F.linear`` (weight_dtype ``default`` with the fp8 files, and ``fp8``): the official maths;
* ``fp8_fast``: :func:`ideogram4.quantization.fp8_matmul_linear`, activations quantised per token and one fp8
  ``torch._scaled_mm`` (weight_dtype ``fp8_fast``, opt-in, approximate).

Per size, the rows are the cond pass (``n_text + N`` tokens) and the uncond pass (``N`` tokens), each Linear timed
(median of ``--repeats`` after a warm-up, synchronised) and multiplied by the 34 blocks: "Linears per step" is
the time of all block Linears of one step, the part the weight dtype changes (attention and the elementwise work
are the same for all three). Error: relative Frobenius distance of each output to the float32 product of the same
(bf16-rounded) activations with the float32 weights they approximate; fp8 weights come from the official per-row
quantiser of those weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ideogram4.dit_config import DiTConfig  # noqa: E402
from ideogram4.quantization import (  # noqa: E402
    dequantize_fp8_rowwise,
    fp8_matmul_linear,
    quantize_fp8_rowwise,
    supports_fp8_matmul,
)

TEXT_TOKENS = 128
PATHS = ("bf16", "fp8 de-quantised", "fp8_fast")


def block_linears(config: DiTConfig, divisor: int) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of the block Linears whose weights the fp8 files quantise."""
    hidden, mlp = config.hidden_size // divisor, config.intermediate_size // divisor
    return {"attention.qkv": (hidden, 3 * hidden), "attention.o": (hidden, hidden), "feed_forward.w1": (hidden, mlp),
            "feed_forward.w3": (hidden, mlp), "feed_forward.w2": (mlp, hidden)}


def timed(function, device: torch.device, repeats: int) -> float:
    function()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference).norm() / reference.norm())


def measure(args) -> dict:
    device = torch.device(args.device)
    config = DiTConfig()
    generator = torch.Generator(device).manual_seed(0)
    fast = supports_fp8_matmul(device, torch.bfloat16)
    rows = []
    for size in args.sizes:
        image_tokens = (size // 16) ** 2
        for branch, tokens in (("cond", TEXT_TOKENS + image_tokens), ("uncond", image_tokens)):
            for name, (fan_in, fan_out) in block_linears(config, args.width_divisor).items():
                weight = torch.randn((fan_out, fan_in), generator=generator, device=device) / fan_in ** 0.5
                weight_fp8, scale = quantize_fp8_rowwise(weight)
                weight_bf16 = weight.to(torch.bfloat16)
                x = torch.randn((tokens, fan_in), generator=generator, device=device).to(torch.bfloat16)
                calls = {
                    "bf16": lambda: F.linear(x, weight_bf16),
                    "fp8 de-quantised": lambda: F.linear(x, dequantize_fp8_rowwise(weight_fp8, scale, torch.bfloat16)),
                }
                if fast:
                    calls["fp8_fast"] = lambda: fp8_matmul_linear(x, weight_fp8, None, scale)
                exact = x.float() @ weight.T
                for path, call in calls.items():
                    rows.append({"size": size, "branch": branch, "layer": name, "tokens": tokens, "path": path,
                                 "seconds": timed(call, device, args.repeats),
                                 "relative_error": relative_error(call(), exact)})
                del weight, weight_fp8, weight_bf16, x, exact
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "blocks": config.num_layers, "width_divisor": args.width_divisor,
            "fp8_matmul": fast, "rows": rows}


def step_table(results: dict) -> list[dict]:
    """Per size and path: the block Linears of one step (cond + uncond, all blocks) and the mean error."""
    table = []
    for size in sorted({row["size"] for row in results["rows"]}):
        for path in PATHS:
            picked = [row for row in results["rows"] if row["size"] == size and row["path"] == path]
            if picked:
                table.append({"size": size, "path": path,
                              "seconds_per_step": results["blocks"] * sum(row["seconds"] for row in picked),
                              "relative_error": statistics.mean(row["relative_error"] for row in picked)})
    return table


def print_table(results: dict, table: list[dict]) -> None:
    print(f"\nBlock Linears of one step ({results['blocks']} blocks x 5 Linears, cond + uncond), {results['device']}, "
          f"torch {results['torch']}" + (f", widths / {results['width_divisor']}" if results["width_divisor"] > 1 else ""))
    print(f"{'size':>6}  {'path':<18}{'Linears per step s':>20}{'x bf16':>8}{'rel. error':>12}")
    for row in table:
        bf16 = next(r["seconds_per_step"] for r in table if r["size"] == row["size"] and r["path"] == "bf16")
        print(f"{row['size']:>6}  {row['path']:<18}{row['seconds_per_step']:>20.4f}"
              f"{bf16 / row['seconds_per_step']:>8.2f}{row['relative_error']:>12.2e}")
    if not results["fp8_matmul"]:
        print("(no fp8 matrix multiplies on this device: fp8_fast not measured)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width-divisor", type=int, default=1, help="shrink the widths (CPU smoke tests)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    results = measure(args)
    table = step_table(results)
    results["step"] = table
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    print_table(results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
