"""Whole-pipeline memory tiers: the pack's nodes under ComfyUI's model management, fp8 weights, a VRAM cap.

    PHASES=memory bash benchmarks/gpu_run.sh   (runs python3 -m benchmarks.memory_tiers --caps 24 12 ...)

For each cap (GiB) a fresh child process
  * caps PyTorch's allocator with ``torch.cuda.set_per_process_memory_fraction(cap / card)`` (a hard limit: going
    over is an out-of-memory error, so a pass proves the tier) and tells ComfyUI to plan for the same budget with
    ``--reserve-vram (card - cap)``;
  * imports ComfyUI (``$COMFYUI_PATH`` or ``~/comfy/ComfyUI``) and this pack's nodes in-process, as ComfyUI loads a
    custom-node package, and runs the text-to-image graph through the nodes' own ``execute``: DiT Loader (both
    transformers, fp8 files kept fp8: ``weight_dtype=default``), Text Encoder Loader, Text Encode, Sampler
    (preset ``Default 20`` = V4_DEFAULT_20 at ``--size``), VAE Loader, VAE Decode;
  * runs the loaders once (ComfyUI caches loader outputs between prompts) and then encode + sample + decode
    ``--runs`` times, and reports the load time, the wall time per image of the first image (cold: ComfyUI moves
    weights to the GPU on first use) and the median of the others (warm), per-stage times, and the peak memory
    the allocator held (``max_memory_allocated`` / ``max_memory_reserved``; the CUDA context, ~0.5 GiB, comes on
    top).

ComfyUI's DynamicVRAM (comfy-aimdo; on by default when ``main.py`` starts on NVIDIA) is off here unless
``--dynamic-vram`` is given; then the child initialises comfy-aimdo the way ``main.py`` does.

Weights: ``--models-dir`` must hold the Comfy-Org file names (diffusion_models/ideogram4_fp8_scaled.safetensors,
diffusion_models/ideogram4_unconditional_fp8_scaled.safetensors, text_encoders/qwen3vl_8b_fp8_scaled.safetensors,
vae/flux2-vae.safetensors). ``--make-models full`` first writes random stand-ins of the real sizes in the real
layout there (fp8 per-tensor ``comfy_quant`` block weights, ~28 GB, drawn on the GPU); ``--make-models tiny``
writes the unit tests' tiny stand-ins (tools/make_tiny_weights.py), and ``--make-models tiny-generator`` runs the
full-size generator at those tiny sizes; that is how this script is smoke-tested on a CPU (``--device cpu``: no
cap, the peak is the process's resident memory).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_MODULE_NAME = "comfyui_ideogram4_reference_benchmark"
DEFAULT_COMFYUI = pathlib.Path(os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI")).expanduser()
PROMPT = ('{"high_level_description":"A lighthouse on a rocky coast at dusk","compositional_deconstruction":'
          '{"background":"a calm sea under an orange sky","elements":[{"type":"obj","desc":"a white lighthouse '
          'with a red lamp room on dark rocks"},{"type":"text","text":"NORTH POINT","desc":"white serif letters '
          'painted on the lighthouse base"}]}}')
FP8_MAX = 448.0


# ---------------------------------------------------------------------------------------------------- stand-in weights

def _file_names():
    from tools.make_tiny_weights import DIT_FILE, TEXT_ENCODER_FILE, UNCOND_DIT_FILE, VAE_FILE

    return {"dit": DIT_FILE, "uncond_dit": UNCOND_DIT_FILE, "text_encoder": TEXT_ENCODER_FILE, "vae": VAE_FILE}


def _random_tensor(name: str, shape: tuple, generator, device):
    """Scaled like the unit tests' stand-ins: Linear/conv N(0, 1/fan_in), norms 1 + N(0, 0.01), biases
    N(0, 0.01), embeddings N(0, 0.25)."""
    import torch

    value = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if "norm" in name:
        return value.mul_(0.1).add_(1.0) if name.endswith("weight") else value.mul_(0.1)
    if name.endswith(".bias"):
        return value.mul_(0.1)
    if "embed" in name:
        return value.mul_(0.5)
    if len(shape) >= 2:
        fan_in = 1
        for size in shape[1:]:
            fan_in *= size
        return value.mul_(fan_in ** -0.5)
    return value


def _store_fp8_per_tensor(tensors: dict, key: str, value) -> None:
    """ComfyUI ``comfy_quant`` float8: fp8 weight, float32 scalar ``weight_scale``, the format as UTF-8 bytes."""
    import torch

    scale = (value.abs().amax() / FP8_MAX).clamp(min=1e-12)
    tensors[key] = (value / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).cpu()
    layer = key[: -len(".weight")]
    tensors[layer + ".weight_scale"] = scale.reshape(()).to(torch.float32).cpu()
    tensors[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                   dtype=torch.uint8)


def write_full_size_models(models_dir: pathlib.Path, device: str, seed: int = 0, configs=None,
                           roles=("dit", "uncond_dit", "text_encoder", "vae")) -> None:
    """Random stand-ins of the released sizes in the Comfy-Org layouts, drawn on ``device`` one tensor at a time.

    ``configs``: (DiTConfig, Qwen3VLTextConfig, VAEConfig) to write other sizes through the same code (the CPU
    smoke test uses the unit tests' tiny ones); default the released sizes. ``roles``: which of the four files.
    """
    import torch
    from safetensors.torch import save_file

    from ideogram4.dit import Ideogram4DiT
    from ideogram4.dit_config import DiTConfig
    from ideogram4.text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder
    from ideogram4.vae import Flux2AutoEncoder, VAEConfig

    names = _file_names()
    generator = torch.Generator(device).manual_seed(seed)

    def write(role, shapes, fp8_key, prefix="", extra=None):
        path = models_dir / names[role]
        if role not in roles:
            return
        if path.is_file():
            print(f"[memory_tiers] keeping {path}", flush=True)
            return
        started = time.perf_counter()
        tensors = {}
        for name in sorted(shapes):
            value = _random_tensor(name, shapes[name], generator, device)
            if fp8_key(name, shapes[name]):
                _store_fp8_per_tensor(tensors, prefix + name, value)
            else:
                tensors[prefix + name] = value.to(torch.float32 if role == "vae" else torch.bfloat16).cpu()
            del value
        tensors.update(extra or {})
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        print(f"[memory_tiers] wrote {path} ({path.stat().st_size / 1e9:.2f} GB, "
              f"{time.perf_counter() - started:.0f} s)", flush=True)

    def block_linear(name, shape):
        return name.startswith("layers.") and name.endswith(".weight") and len(shape) == 2

    dit_config, text_config, vae_config = configs or (DiTConfig(), Qwen3VLTextConfig(), VAEConfig())
    dit_shapes = {k: tuple(v.shape) for k, v in Ideogram4DiT(dit_config, device="meta").state_dict().items()}
    write("dit", dit_shapes, block_linear)
    write("uncond_dit", dit_shapes, block_linear)
    text_shapes = {k: tuple(v.shape) for k, v in Qwen3VLTextEncoder(text_config, device="meta").state_dict().items()}
    hidden = text_config.hidden_size
    write("text_encoder", text_shapes, block_linear, prefix="model.language_model.", extra={
        # The real file also holds the final norm and the vision tower, which the pack never reads.
        "model.language_model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
        "model.visual.merger.linear_fc2.weight": torch.zeros((hidden, 4 * hidden), dtype=torch.bfloat16),
    })
    vae_shapes = {k: tuple(v.shape) for k, v in Flux2AutoEncoder(vae_config, device="meta").state_dict().items()}
    bn = 4 * vae_config.latent_channels
    write("vae", vae_shapes, lambda name, shape: False, extra={
        "bn.running_mean": torch.zeros(bn), "bn.running_var": torch.ones(bn),
        "bn.num_batches_tracked": torch.tensor(0, dtype=torch.int64)})


def make_models(kind: str, models_dir: pathlib.Path, device: str) -> None:
    if kind == "tiny-generator":  # the full-size generator's code at the unit tests' tiny sizes (its smoke test)
        from tools.make_tiny_weights import TINY_DIT_CONFIG, TINY_TEXT_ENCODER_CONFIG, TINY_VAE_CONFIG

        write_full_size_models(models_dir, device, configs=(TINY_DIT_CONFIG, TINY_TEXT_ENCODER_CONFIG, TINY_VAE_CONFIG))
    elif kind == "tiny":
        from tools.make_tiny_weights import write_tiny_weights

        if not all((models_dir / name).is_file() for name in _file_names().values()):
            write_tiny_weights(models_dir)
    elif kind == "full":
        write_full_size_models(models_dir, device)


# ---------------------------------------------------------------------------------------------------- one tier (child)

def _import_comfy_and_pack(comfyui: pathlib.Path, device: str, reserve_gib: float | None, dynamic_vram: bool,
                           pack_root: pathlib.Path = REPO_ROOT):
    sys.path.insert(0, str(comfyui))  # ComfyUI's top-level modules (nodes.py, utils/) must win inside ComfyUI
    from comfy.cli_args import args

    args.cpu = device == "cpu"
    if reserve_gib is not None:
        args.reserve_vram = reserve_gib
    import comfy.model_management
    import comfy.model_patcher

    if dynamic_vram and device != "cpu":
        import comfy.memory_management
        import comfy_aimdo.control

        devices = comfy.model_management.get_all_torch_devices()
        try:
            initialised = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3))
                                                           for d in devices)
        except TypeError:
            initialised = comfy_aimdo.control.init_devices(d.index for d in devices)
        if not initialised:
            raise RuntimeError("--dynamic-vram: comfy-aimdo could not initialise the device.")
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True

    spec = importlib.util.spec_from_file_location(PACK_MODULE_NAME, pack_root / "__init__.py",
                                                  submodule_search_locations=[str(pack_root)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE_NAME] = pack
    spec.loader.exec_module(pack)
    return {name: importlib.import_module(f"{PACK_MODULE_NAME}.nodes.{name}")
            for name in ("dit_loader", "text_encoder_nodes", "sampler_node", "vae_nodes")}


def _run_node(node_class, **inputs):
    output = node_class.execute(**inputs)
    return tuple(output.args) if hasattr(output, "args") else tuple(output)


def run_tier(args) -> dict:
    """One cap in this process: returns the measurements."""
    import torch

    result = {"cap_gib": args.cap, "device": args.device, "size": args.size, "preset": args.preset}
    reserve = None
    if args.device != "cpu":
        total = torch.cuda.get_device_properties(0).total_memory
        result.update(gpu=torch.cuda.get_device_name(0), card_gib=total / 2**30)
        if args.cap:
            cap = args.cap * 2**30
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
            reserve = max(0.0, (total - cap) / 2**30)
    nodes = _import_comfy_and_pack(pathlib.Path(args.comfyui), args.device, reserve, args.dynamic_vram)
    import folder_paths

    for folder in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(folder, str(pathlib.Path(args.models_dir) / folder), is_default=True)
    names = {role: pathlib.PurePosixPath(name).name for role, name in _file_names().items()}

    def synchronize():
        if args.device != "cpu":
            torch.cuda.synchronize()

    def timed_node(stages, name, node_class, **inputs):
        begun = time.perf_counter()
        out = _run_node(node_class, **inputs)
        synchronize()
        stages[name] = time.perf_counter() - begun
        return out

    # Loaders run once, as ComfyUI caches their outputs between prompts; ComfyUI moves the weights to the GPU
    # lazily, so the first image also pays that (its "cold" time).
    load = {}
    cond, uncond = timed_node(load, "dit_loader", nodes["dit_loader"].DiTLoader, cond_model_name=names["dit"],
                              uncond_model_name=names["uncond_dit"], weight_dtype="default")
    (encoder,) = timed_node(load, "text_encoder_loader", nodes["text_encoder_nodes"].TextEncoderLoader,
                            text_encoder_name=names["text_encoder"])
    (vae,) = timed_node(load, "vae_loader", nodes["vae_nodes"].VAELoader, vae_name=names["vae"])
    result["load_seconds"] = load

    runs = []
    for index in range(args.runs):
        stages = {}
        started = time.perf_counter()
        (conditioning,) = timed_node(stages, "text_encode", nodes["text_encoder_nodes"].TextEncode,
                                     text_encoder=encoder, prompt=PROMPT)
        (latent,) = timed_node(stages, "sample", nodes["sampler_node"].Sampler, cond_model=cond,
                               uncond_model=uncond, conditioning=conditioning, preset=args.preset, steps=20, mu=0.0,
                               std=1.0, guidance_schedule="", seed=index, width=args.size, height=args.size,
                               batch_size=1)
        (image,) = timed_node(stages, "vae_decode", nodes["vae_nodes"].VAEDecode, samples=latent, vae=vae,
                              tiled=False)
        seconds = time.perf_counter() - started
        runs.append({"seconds": seconds, "stages": stages, "image_shape": list(image.shape),
                     "image_finite": bool(torch.isfinite(image).all())})
        print(f"[memory_tiers] cap {args.cap} image {index}: {seconds:.1f} s "
              + " ".join(f"{k}={v:.1f}" for k, v in stages.items()), flush=True)
        del conditioning, latent, image

    result["runs"] = runs
    result["cold_seconds"] = runs[0]["seconds"]
    if len(runs) > 1:
        result["warm_seconds"] = statistics.median(run["seconds"] for run in runs[1:])
    if args.device != "cpu":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated(0) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(0) / 2**30
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


# ---------------------------------------------------------------------------------------------------- driver

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caps", type=float, nargs="+", default=[24.0, 12.0], help="VRAM caps in GiB (0 = none)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--preset", default="Default 20")
    parser.add_argument("--runs", type=int, default=2, help="images per tier; the first one loads from disk")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--models-dir", default=str(pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "i4-models"))
    parser.add_argument("--make-models", choices=("none", "full", "tiny", "tiny-generator"), default="none",
                        help="write random stand-ins first: full = released sizes; tiny = tools/make_tiny_weights.py; "
                             "tiny-generator = the full-size generator at tiny sizes (its CPU smoke test)")
    parser.add_argument("--comfyui", default=str(DEFAULT_COMFYUI))
    parser.add_argument("--dynamic-vram", action="store_true", help="initialise comfy-aimdo as ComfyUI's main.py does")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per tier")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child-cap", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_cap is not None:
        args.cap = args.child_cap
        print("MEMORY_TIER_RESULT " + json.dumps(run_tier(args)), flush=True)
        return 0

    models_dir = pathlib.Path(args.models_dir)
    if args.make_models != "none":
        make_models(args.make_models, models_dir, args.device)
    rows = []
    for cap in (args.caps if args.device != "cpu" else [0.0]):
        command = [sys.executable, "-m", "benchmarks.memory_tiers", "--child-cap", str(cap), "--size", str(args.size),
                   "--preset", args.preset, "--runs", str(args.runs), "--device", args.device,
                   "--models-dir", str(models_dir), "--comfyui", args.comfyui]
        if args.dynamic_vram:
            command.append("--dynamic-vram")
        row = {"cap_gib": cap}
        try:
            completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=args.timeout)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("MEMORY_TIER_RESULT ")]
            if lines:
                row = json.loads(lines[-1][len("MEMORY_TIER_RESULT "):])
            else:
                row["error"] = (completed.stderr or completed.stdout)[-1500:]
            print(completed.stdout[-3000:], flush=True)
        except subprocess.TimeoutExpired:
            row["error"] = f"timed out after {args.timeout:.0f} s"
        rows.append(row)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))

    print(f"\n{'cap GiB':>8} {'cold s/img':>10} {'warm s/img':>10} {'peak alloc GiB':>14} {'peak resv GiB':>13}")
    for row in rows:
        if "error" in row:
            print(f"{row['cap_gib']:>8g} failed: {row['error'].strip().splitlines()[-1][:150]}")
            continue
        peak = row.get("peak_allocated_gib", row.get("peak_rss_gib", float("nan")))
        reserved = row.get("peak_reserved_gib", float("nan"))
        print(f"{row['cap_gib']:>8g} {row['cold_seconds']:>10.1f} {row.get('warm_seconds', float('nan')):>10.1f} "
              f"{peak:>14.2f} {reserved:>13.2f}")
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
