"""One step (cond + uncond forward) on the fp8 files artists download, through the loaders they use.

    GPU:       python3 -m benchmarks.fp8_step --device cuda --make-models --models-dir /tmp/i4-models-full --json $OUT/fp8_step.json
    CPU smoke: ~/comfy/ComfyUI/.venv/bin/python -m benchmarks.fp8_step --device cpu --make-models --layers 1 \\
               --models-dir /tmp/i4-fp8-1 --sizes 128 --repeats 1 --warmup 0

The Comfy-Org file pair (``ideogram4_fp8_scaled`` + ``ideogram4_unconditional_fp8_scaled``: block Linear weights
per-tensor scaled fp8 with ``comfy_quant``, the rest bf16; random stand-ins of the released shapes, ``--layers``
blocks, drawn on the device by ``memory_tiers.write_full_size_models``) is loaded, one implementation at a time:

* ``native-fp8``: ComfyUI's ``comfy.sd.load_diffusion_model`` (Load Diffusion Model): its mixed-precision ops,
  which on a GPU with fp8 matrix multiplies run the fp8 layers as fp8 products (elsewhere de-quantised);
* ``pack-default``: the DiT Loader with ``weight_dtype=default``: fp8 kept, de-quantised per layer (the official
  maths, bit for bit);
* ``pack-fp8_fast``: the DiT Loader with ``weight_dtype=fp8_fast`` (fp8 products where the device has them);

each pair moved to the device by ComfyUI's ``load_models_gpu`` (whole), then called as its own sampler calls it
(native: ``diffusion_model(x, sigma, context)`` in ComfyUI's latent layout; the pack: its velocity functions),
one 128-token prompt, t = 0.625. Reported per size: median step seconds after ``--warmup`` steps, peak memory
allocated during the step, × native-fp8 (> 1: faster), and at the first size the relative error of each
implementation's velocities against ``pack-default`` (the official fp8 maths).
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.memory_tiers import (  # noqa: E402
    DEFAULT_COMFYUI,
    PACK_MODULE_NAME,
    _file_names,
    _import_comfy_and_pack,
    write_full_size_models,
)

IMPLEMENTATIONS = ("native-fp8", "pack-default", "pack-fp8_fast")
TEXT_TOKENS = 128
MODEL_TIME = 0.625  # exact in bf16, and 1 - (1 - t) = t in float32: every implementation sees the same time


def make_models(models_dir: pathlib.Path, device: str, layers: int, tiny: bool = False) -> None:
    """The stand-in pair at the released widths with ``layers`` blocks (``tiny``: the unit tests' tiny widths, which
    only the pack's loader reads; ComfyUI native reads its dimensions off the released shapes)."""
    import dataclasses

    from ideogram4.dit_config import DiTConfig
    from ideogram4.text_encoder import Qwen3VLTextConfig
    from ideogram4.vae import VAEConfig
    from tools.make_tiny_weights import TINY_DIT_CONFIG

    dit_config = dataclasses.replace(TINY_DIT_CONFIG if tiny else DiTConfig(), num_layers=layers)
    configs = (dit_config, Qwen3VLTextConfig(), VAEConfig())
    write_full_size_models(models_dir, device, configs=configs, roles=("dit", "uncond_dit"))


def load(implementation: str, paths, nodes):
    """(cond patcher, uncond patcher, calls) where calls(z, features, grid) -> (v_cond, v_uncond) float32."""
    import comfy.sd

    from ideogram4.velocity import conditional_velocity, unconditional_velocity

    from benchmarks.native_comfy import native_velocity

    compat = sys.modules[f"{PACK_MODULE_NAME}.nodes.compat"]
    if implementation == "native-fp8":
        cond, uncond = (comfy.sd.load_diffusion_model(str(path)) for path in paths)
    else:
        weight_dtype = implementation.split("-", 1)[1]
        cond, uncond = nodes["dit_loader"].load_dit_patchers(str(paths[0]), str(paths[1]), weight_dtype)
    dtype = compat.inference_dtype(cond.model)

    def calls(z, features, grid_h, grid_w):
        cond_model, uncond_model = cond.model.diffusion_model, uncond.model.diffusion_model
        if implementation == "native-fp8":
            return (native_velocity(cond_model, z, MODEL_TIME, features, grid_h, grid_w, dtype),
                    native_velocity(uncond_model, z, MODEL_TIME, None, grid_h, grid_w, dtype))
        return (conditional_velocity(cond_model, z, MODEL_TIME, features, None, grid_h, grid_w, dtype=dtype),
                unconditional_velocity(uncond_model, z, MODEL_TIME, grid_h, grid_w, dtype=dtype))

    return cond, uncond, calls, dtype


def run(args) -> dict:
    import torch

    device = torch.device(args.device)
    models_dir = pathlib.Path(args.models_dir)
    if args.make_models:
        make_models(models_dir, args.device, args.layers, args.tiny)
    nodes = _import_comfy_and_pack(pathlib.Path(args.comfyui), args.device, None, False)
    import comfy.model_management as mm

    from ideogram4.dit_checkpoint import inspect_dit_checkpoint

    names = _file_names()
    paths = (models_dir / names["dit"], models_dir / names["uncond_dit"])
    config = inspect_dit_checkpoint(paths[0]).config
    generator = torch.Generator().manual_seed(0)
    problems = {}
    for size in args.sizes:
        grid = size // 16
        problems[size] = (torch.randn((1, grid * grid, 128), generator=generator),
                          torch.randn((1, TEXT_TOKENS, config.llm_features_dim), generator=generator), grid)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "layers": config.num_layers, "timings": [], "errors": []}
    velocities = {}
    for implementation in args.implementations:
        started = time.perf_counter()
        cond, uncond, calls, dtype = load(implementation, paths, nodes)
        mm.load_models_gpu([cond, uncond], force_full_load=True)
        load_seconds = time.perf_counter() - started
        print(f"[fp8_step] {implementation}: loaded in {load_seconds:.1f} s, computing in {dtype}", flush=True)
        for size, (z, features, grid) in problems.items():
            z_device, features_device = z.to(device), features.to(device)
            with torch.no_grad():
                if size == args.sizes[0]:
                    velocities[implementation] = [v.float().cpu() for v in calls(z_device, features_device, grid, grid)]
                for _ in range(args.warmup):
                    calls(z_device, features_device, grid, grid)
                synchronize()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = []
                for _ in range(args.repeats):
                    begun = time.perf_counter()
                    calls(z_device, features_device, grid, grid)
                    synchronize()
                    seconds.append(time.perf_counter() - begun)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            result["timings"].append({"implementation": implementation, "size": size, "dtype": str(dtype),
                                      "seconds": statistics.median(seconds), "seconds_all": seconds,
                                      "peak_gib": peak, "load_seconds": load_seconds})
            print(f"[fp8_step] {implementation} {size}x{size}: {statistics.median(seconds):.4f} s", flush=True)
        del cond, uncond, calls
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()

    reference = velocities.get("pack-default")
    for implementation, (v_cond, v_uncond) in velocities.items():
        if reference is None or implementation == "pack-default":
            continue
        for branch, value, ref in (("cond", v_cond, reference[0]), ("uncond", v_uncond, reference[1])):
            result["errors"].append({"implementation": implementation, "branch": branch, "size": args.sizes[0],
                                     "relative_error": float((value - ref).norm() / ref.norm())})
    return result


def print_table(result: dict) -> None:
    print(f"\nOne step on the fp8 files ({result['layers']} blocks), {result['device']}, torch {result['torch']}")
    print(f"{'size':>6}  {'implementation':<16}{'step s':>10}{'peak GiB':>10}{'x native-fp8':>14}")
    for row in result["timings"]:
        native = next((r["seconds"] for r in result["timings"]
                       if r["size"] == row["size"] and r["implementation"] == "native-fp8"), None)
        ratio = f"{native / row['seconds']:.2f}" if native else "-"
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-"
        print(f"{row['size']:>6}  {row['implementation']:<16}{row['seconds']:>10.4f}{peak:>10}{ratio:>14}")
    for row in result["errors"]:
        print(f"relative error vs pack-default (official fp8 maths), {row['size']}^2 {row['branch']}: "
              f"{row['implementation']} {row['relative_error']:.2e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models-dir", default="/tmp/i4-models-full")
    parser.add_argument("--make-models", action="store_true", help="write the stand-in pair first (kept if there)")
    parser.add_argument("--layers", type=int, default=34, help="blocks in the stand-in files (released: 34)")
    parser.add_argument("--tiny", action="store_true", help="--make-models at the unit tests' tiny widths (pack only)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--comfyui", default=str(DEFAULT_COMFYUI))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
