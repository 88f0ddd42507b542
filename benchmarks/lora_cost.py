"""What a LoRA costs at run time on fp8-stored weights: step time and memory, with and without a rank-32 LoRA.

    ~/comfy/ComfyUI/.venv/bin/python -m benchmarks.lora_cost --config small --size 512 --json /tmp/lora_cost.json
    smoke: ... -m benchmarks.lora_cost --config tiny --size 64 --repeats 1 --warmup 0

A DiT pair of ``--config`` (random weights, every block Linear stored in the official fp8 per-row layout) is loaded
by the pack's DiT Loader with ``weight_dtype=default`` (fp8 kept in memory), and a rank-``--rank`` LoRA on every
block Linear (attention qkv/o, feed-forward w1/w2/w3, adaln_modulation; raw official key layout) is applied on the
conditional model by the pack's LoRA Loader. ComfyUI loads each pair with ``load_models_gpu``; the patched fp8 layers
are de-quantised and patched each time they run, so the weights stay fp8 in memory. Reported:

* step seconds (one conditional + one unconditional forward, one ``--text-tokens`` prompt), median of
  ``--repeats`` rounds in which the cases take turns (after ``--warmup`` steps), without the LoRA, with it fully loaded, and with it under a memory cap that
  leaves ``--partial-fraction`` of the model resident (the rest streamed);
* one attention ``qkv`` Linear of the config on its own (steadier than whole steps on a busy machine): the
  seconds to de-quantise its weight, to de-quantise and apply the LoRA (what a patched fp8 layer does each call)
  and of its product over the conditional pass's tokens;
* the bytes the LoRA's patch tensors hold, the bytes of the model's stored weights, and the growth of the
  process's peak resident memory over the timed steps (after a no-LoRA warm-up set the first peak).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import resource
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.dit_step import CONFIGS  # noqa: E402
from benchmarks.memory_tiers import DEFAULT_COMFYUI, PACK_MODULE_NAME, _import_comfy_and_pack  # noqa: E402

BLOCK_LINEARS = ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                 "adaln_modulation")
MODEL_TIME = 0.625


def write_files(folder: pathlib.Path, config, rank: int) -> tuple[str, str, str]:
    """(cond, uncond, LoRA) files: fp8 per-row block weights, and a LoRA on every block Linear."""
    import torch
    from safetensors.torch import save_file

    from ideogram4.dit import Ideogram4DiT
    from tools.make_tiny_weights import module_shapes, random_tensors, store_official_fp8_rowwise

    shapes = module_shapes(Ideogram4DiT, config)
    paths = []
    for seed, name in ((1, "cond_fp8.safetensors"), (2, "uncond_fp8.safetensors")):
        save_file(store_official_fp8_rowwise(random_tensors(shapes, torch.Generator().manual_seed(seed))),
                  str(folder / name))
        paths.append(str(folder / name))
    generator = torch.Generator().manual_seed(3)
    lora = {}
    for block in range(config.num_layers):
        for module in BLOCK_LINEARS:
            out_features, in_features = shapes[f"layers.{block}.{module}.weight"]
            stem = f"diffusion_model.layers.{block}.{module}"
            lora[f"{stem}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
            lora[f"{stem}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    save_file(lora, str(folder / "lora_rank.safetensors"))
    return paths[0], paths[1], str(folder / "lora_rank.safetensors")


def layer_seconds(out_features: int, in_features: int, rank: int, tokens: int, repeats: int) -> dict:
    """One fp8 row-wise Linear on its own (less noise than whole steps): seconds to de-quantise its weight, to
    de-quantise and apply a rank-``rank`` LoRA through ComfyUI's ``calculate_weight`` (what a patched fp8 layer does
    each call), and of its product over ``tokens`` rows; medians of ``repeats``."""
    import comfy.lora
    import torch
    import torch.nn.functional as F
    from comfy.weight_adapter.lora import LoRAAdapter

    from ideogram4.quantization import dequantize_fp8_rowwise, quantize_fp8_rowwise

    generator = torch.Generator().manual_seed(4)
    stored, scale = quantize_fp8_rowwise(torch.randn(out_features, in_features, generator=generator))
    lora = LoRAAdapter(set(), (torch.randn(out_features, rank, generator=generator),
                               torch.randn(rank, in_features, generator=generator), None, None, None, None))
    x = torch.randn(1, tokens, in_features, generator=generator)
    weight = dequantize_fp8_rowwise(stored, scale, torch.float32)
    work = {
        "dequantise": lambda: dequantize_fp8_rowwise(stored, scale, torch.float32),
        "dequantise + LoRA": lambda: comfy.lora.calculate_weight(
            [(1.0, lora, 1.0, None, None)], dequantize_fp8_rowwise(stored, scale, torch.float32), "w",
            intermediate_dtype=torch.float32),
        f"product over {tokens} tokens": lambda: F.linear(x, weight),
    }
    seconds = {}
    with torch.no_grad():
        for name, run_once in work.items():
            run_once()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run_once()
                times.append(time.perf_counter() - start)
            seconds[name] = statistics.median(times)
    return {"shape": [out_features, in_features], "seconds": seconds}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    nodes = _import_comfy_and_pack(pathlib.Path(args.comfyui), "cpu", None, False)
    lora_loader = importlib.import_module(f"{PACK_MODULE_NAME}.nodes.lora_loader")
    import comfy.model_management
    import folder_paths

    from ideogram4.velocity import conditional_velocity, unconditional_velocity

    config = CONFIGS[args.config]
    folder = pathlib.Path(tempfile.mkdtemp(prefix="lora_cost_"))
    cond_path, uncond_path, lora_path = write_files(folder, config, args.rank)
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    cond, uncond = nodes["dit_loader"].load_dit_patchers(cond_path, uncond_path, "default")
    output = lora_loader.LoraLoader.execute(cond_model=cond, uncond_model=uncond,
                                            lora_name=pathlib.Path(lora_path).name, strength_cond=1.0)
    lora_cond = output.args[0]

    grid = args.size // 16
    generator = torch.Generator().manual_seed(0)
    z = torch.randn((1, grid * grid, config.in_channels), generator=generator)
    features = torch.randn((1, args.text_tokens, config.llm_features_dim), generator=generator)

    def step(cond_patcher, memory_fraction, timed_steps):
        """Load the pair (whole, or ``memory_fraction`` of each resident), then run the steps; seconds of each."""
        comfy.model_management.unload_all_models()
        for patcher in (cond_patcher, uncond):
            if memory_fraction is None:
                comfy.model_management.load_models_gpu([patcher])
            else:
                patcher.load(torch.device("cpu"), lowvram_model_memory=int(patcher.model_size() * memory_fraction))
        seconds = []
        with torch.no_grad():
            for _ in range(timed_steps):
                start = time.perf_counter()
                conditional_velocity(cond_patcher.model.diffusion_model, z, MODEL_TIME, features, None, grid, grid,
                                     dtype=torch.float32)
                unconditional_velocity(uncond.model.diffusion_model, z, MODEL_TIME, grid, grid, dtype=torch.float32)
                seconds.append(time.perf_counter() - start)
        if memory_fraction is not None:
            for patcher in (cond_patcher, uncond):
                patcher.detach()
        return seconds

    cases = {"no LoRA": (cond, None), "LoRA, full load": (lora_cond, None),
             f"LoRA, {args.partial_fraction:.0%} resident": (lora_cond, args.partial_fraction)}
    step(cond, None, args.warmup)
    peak_before = peak_rss_bytes()  # the no-LoRA warm-up sets the first peak
    # The cases take turns, one timed step each per round, so a change in the machine's load hits them alike.
    timings = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case, (cond_patcher, fraction) in cases.items():
            timings[case] += step(cond_patcher, fraction, 1)
    peak_after = peak_rss_bytes()
    comfy.model_management.unload_all_models()

    def tensor_bytes(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(tensor_bytes(item) for item in value)
        return tensor_bytes(getattr(value, "weights", ()))

    qkv_out, qkv_in = 3 * config.hidden_size, config.hidden_size
    layer = layer_seconds(qkv_out, qkv_in, args.rank, grid * grid + args.text_tokens, max(5, args.repeats))
    patch_bytes = sum(tensor_bytes(patch[1]) for patches in lora_cond.patches.values() for patch in patches)
    stored_bytes = sum(t.numel() * t.element_size() for t in cond.model.diffusion_model.state_dict().values())
    return {
        "config": args.config, "size": args.size, "rank": args.rank, "text_tokens": args.text_tokens,
        "threads": args.threads, "patched_weights": len(lora_cond.patches),
        "step_seconds": {case: statistics.median(seconds) for case, seconds in timings.items()},
        "step_seconds_all": timings,
        "lora_patch_bytes": patch_bytes, "model_stored_bytes": stored_bytes,
        "peak_rss_growth_bytes": peak_after - peak_before, "qkv_layer": layer,
    }


def print_table(result: dict) -> None:
    base = result["step_seconds"]["no LoRA"]
    print(f"config {result['config']}, {result['size']}², rank {result['rank']} on {result['patched_weights']} "
          f"block weights, {result['threads']} thread(s)")
    print("| case | step s | × no LoRA |\n|---|---|---|")
    for case, seconds in result["step_seconds"].items():
        print(f"| {case} | {seconds:.3f} | {seconds / base:.2f} |")
    layer = result["qkv_layer"]
    print(f"one fp8 qkv Linear {layer['shape']}: " + ", ".join(f"{name} {seconds * 1e3:.1f} ms"
                                                                 for name, seconds in layer["seconds"].items()))
    mib = 2 ** 20
    print(f"LoRA patch tensors {result['lora_patch_bytes'] / mib:.1f} MiB; model stored weights (cond) "
          f"{result['model_stored_bytes'] / mib:.1f} MiB; peak RSS growth over the timed steps "
          f"{result['peak_rss_growth_bytes'] / mib:.1f} MiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=str(DEFAULT_COMFYUI))
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels (multiple of 16)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--partial-fraction", type=float, default=0.5)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
