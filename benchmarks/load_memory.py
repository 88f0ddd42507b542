"""Host memory and time to load the models: the pack's DiT and Text Encoder Loaders, ComfyUI native's DiT loader.

    python -m benchmarks.load_memory --make-models /tmp/loadmem --layers 4        # once: random stand-in files
    ~/comfy/ComfyUI/.venv/bin/python -m benchmarks.load_memory --models /tmp/loadmem --compute-dtype bf16

Each case loads the conditional and the unconditional file in a fresh child process, the way the nodes do:

* ``pack <file> <weight_dtype>``: the pack's ``dit_loader.load_dit_patchers`` (what the DiT Loader node runs);
* ``native <file>``: ``comfy.sd.load_diffusion_model`` twice (what ComfyUI's Load Diffusion Model node runs);
* ``pack-text-encoder``: the text encoder alone, through the Text Encoder Loader's ``load_text_encoder_for_comfy``.

and reports the load time and the process's **anonymous** resident memory (``RssAnon``: memory the process owns)
above what it held before loading: the peak during the load (sampled every 5 ms) and what stays held once the
models are built; then, once every weight page has been read (as the first run will), the pages of the
memory-mapped files the models use (``RssFile``, "+ file": weights assigned straight from the file; the system can
drop and re-read those pages); and "weights": the bytes of the models' parameters and buffers, what ComfyUI moves to
the GPU.

Files (``--make-models DIR``): the Comfy-Org layout at the released widths with ``--layers`` blocks (the full
model has 34): ``mid_{cond,uncond}_fp8.safetensors`` (block Linear weights fp8 with a per-tensor scale, the rest
bf16) and ``mid_{cond,uncond}_bf16.safetensors``; from the latter ``mid_{cond,uncond}_{q8_0,q4_k}.gguf`` (block
Linears Q8_0 / Q4_K, the other matrices BF16, as the published GGUFs) and ``mid_{cond,uncond}_nf4.safetensors``
(bitsandbytes nf4 Linear weights, as the official ideogram-4-nf4 release); ``mid_text_encoder_fp8.safetensors``: the Comfy-Org text-encoder
layout (decoder Linear weights scaled fp8) with all 36 layers at a quarter of the 8B encoder's width.

``--compute-dtype bf16`` makes a CPU host load the way a GPU host does (the pack computes in bf16 where the device
supports it; on a CPU ComfyUI picks float32, which casts every bf16 weight); ``host`` keeps the host's choice.
``--pack-root`` loads another checkout of the pack (e.g. a ``git worktree`` of an older commit) to compare.
The OS page cache is warmed before each case (the files are read once), so the times compare conversion work,
not the disk.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.memory_tiers import DEFAULT_COMFYUI, REPO_ROOT, _import_comfy_and_pack  # noqa: E402

FORMATS = ("fp8", "bf16", "q8_0", "q4_k", "nf4")
CASES = (
    ("pack", "fp8", "default"), ("native", "fp8", None), ("pack", "fp8", "bf16"),
    ("pack", "bf16", "default"), ("native", "bf16", None), ("pack", "bf16", "fp8"),
    ("pack", "q8_0", "default"), ("pack", "q4_k", "default"), ("pack", "nf4", "default"), ("pack", "q8_0", "bf16"),
    ("pack-text-encoder", "fp8", None),
)
# The quantised formats' files: GGUF (block Linears in that type, the other matrices BF16) and bitsandbytes nf4
# (every Linear weight, as the official ideogram-4-nf4 release), written from the bf16 pair's weights.
_GGUF_TYPES = {"q8_0": "Q8_0", "q4_k": "Q4_K"}
TEXT_ENCODER_FILE = "mid_text_encoder_fp8.safetensors"
GIB = 2 ** 30


def file_pair(models: pathlib.Path, file_format: str) -> tuple[pathlib.Path, pathlib.Path]:
    suffix = "gguf" if file_format in _GGUF_TYPES else "safetensors"
    return models / f"mid_cond_{file_format}.{suffix}", models / f"mid_uncond_{file_format}.{suffix}"


def write_quantized_pair(models: pathlib.Path, file_format: str) -> None:
    """The ``file_format`` pair from the bf16 pair's tensors (one model in memory at a time)."""
    from safetensors.torch import load_file, save_file

    from tools.quantized_weights import gguf_dit_types, store_nf4, write_gguf

    for source, path in zip(file_pair(models, "bf16"), file_pair(models, file_format)):
        if path.is_file():
            print(f"[load_memory] keeping {path}", flush=True)
            continue
        tensors = load_file(str(source))
        if file_format in _GGUF_TYPES:
            write_gguf(path, tensors, gguf_dit_types(_GGUF_TYPES[file_format]), "ideogram4")
        else:
            save_file(store_nf4(tensors, lambda key, value: value.ndim == 2 and key.endswith(".weight")
                                and "norm" not in key and key != "embed_image_indicator.weight"), str(path))
        del tensors
        print(f"[load_memory] wrote {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)


def mid_text_encoder_config():
    """All 36 layers (the taps reach layer 35) at a quarter of the 8B encoder's width: 0.59 B parameters."""
    from ideogram4.text_encoder import Qwen3VLTextConfig

    return Qwen3VLTextConfig(hidden_size=1024, intermediate_size=3072, num_hidden_layers=36, num_attention_heads=8,
                             num_key_value_heads=2, head_dim=128)


def make_models(models: pathlib.Path, layers: int, tiny: bool = False) -> None:
    """Write the stand-in files (see the module docstring); files already there are kept. ``tiny``: the unit
    tests' tiny widths instead of the released ones (the script's own smoke test)."""
    import dataclasses

    from safetensors.torch import save_file

    from ideogram4.dit_config import DiTConfig
    from tools.make_tiny_weights import TINY_DIT_CONFIG, dit_state_dict, text_encoder_state_dict

    models.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(TINY_DIT_CONFIG if tiny else DiTConfig(), num_layers=layers)
    for file_format in ("fp8", "bf16"):
        for seed, path in enumerate(file_pair(models, file_format)):
            if path.is_file():
                print(f"[load_memory] keeping {path}", flush=True)
                continue
            tensors = dit_state_dict(seed, fp8=file_format == "fp8", config=config)
            save_file(tensors, str(path))  # the loaders read the dimensions off the shapes
            del tensors
            print(f"[load_memory] wrote {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    for file_format in _GGUF_TYPES.keys() | {"nf4"}:
        write_quantized_pair(models, file_format)
    path = models / TEXT_ENCODER_FILE
    if not path.is_file():  # Comfy-Org layout: decoder Linear weights per-tensor scaled fp8, the rest bf16
        save_file(text_encoder_state_dict(0, **({} if tiny else {"config": mid_text_encoder_config()})), str(path))
        print(f"[load_memory] wrote {path} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)


# ------------------------------------------------------------------------------------------------------ one case (child)

def resident_bytes(kind: str = "RssAnon") -> int:
    """``kind`` (RssAnon: memory the process owns; RssFile: file pages mapped in) of this process (Linux), bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"load_memory needs Linux (/proc/self/status has no {kind} line).")


class PeakSampler:
    """Samples RssAnon every ``interval`` seconds on a thread while the ``with`` block runs."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._running = interval, 0, False

    def _run(self):
        while self._running:
            self.peak = max(self.peak, resident_bytes("RssAnon"))
            time.sleep(self.interval)

    def __enter__(self):
        self.peak, self._running = resident_bytes("RssAnon"), True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, resident_bytes("RssAnon"))


def touch_every_page(module) -> None:
    """Read one byte of every 4 KiB page of every parameter and buffer (no copy)."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.numel():
            tensor.detach().reshape(-1).view(torch.uint8)[::4096].max()


def run_case(args) -> dict:
    import torch

    nodes = _import_comfy_and_pack(pathlib.Path(args.comfyui), "cpu", None, False, pathlib.Path(args.pack_root))
    import comfy.sd

    cond_path, uncond_path = file_pair(pathlib.Path(args.models), args.file_format)
    if args.compute_dtype == "bf16":
        import comfy.cli_args  # ComfyUI's --bf16-unet / --bf16-text-enc, which the pack's loaders honour

        comfy.cli_args.args.bf16_unet = comfy.cli_args.args.bf16_text_enc = True
    native_options = {"dtype": torch.bfloat16} if args.compute_dtype == "bf16" else {}

    gc.collect()
    before, before_file = resident_bytes("RssAnon"), resident_bytes("RssFile")
    started = time.perf_counter()
    paths = (cond_path, uncond_path)
    with PeakSampler() as sampler:
        if args.implementation == "pack":
            models = nodes["dit_loader"].load_dit_patchers(str(cond_path), str(uncond_path), args.weight_dtype)
        elif args.implementation == "pack-text-encoder":
            paths = (pathlib.Path(args.models) / TEXT_ENCODER_FILE,)
            models = (nodes["text_encoder_nodes"].load_text_encoder_for_comfy(str(paths[0])),)
        else:
            models = tuple(comfy.sd.load_diffusion_model(str(path), model_options=dict(native_options))
                           for path in (cond_path, uncond_path))
        seconds = time.perf_counter() - started
        gc.collect()
    held = resident_bytes("RssAnon")
    modules = [loaded.patcher.model if hasattr(loaded, "patcher") else loaded.model for loaded in models]
    for loaded_module in modules:  # read every weight page, as the first use will: memory-mapped weights then count
        touch_every_page(loaded_module)
    weight_bytes = sum(t.nbytes for m in modules for t in (*m.parameters(), *m.buffers()))
    held_file = resident_bytes("RssFile")
    weight_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in modules[0].parameters()})
    return {"implementation": args.implementation, "file_format": args.file_format,
            "weight_dtype": args.weight_dtype or "-", "seconds": seconds, "peak_gib": (sampler.peak - before) / GIB,
            "held_gib": (held - before) / GIB, "held_file_gib": (held_file - before_file) / GIB,
            "weights_gib": weight_bytes / GIB,
            "parameter_dtypes": weight_dtypes,
            "file_gb": sum(path.stat().st_size for path in paths) / 1e9}


# ------------------------------------------------------------------------------------------------------------ driver

def warm_page_cache(paths) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass


def run_all(args) -> list[dict]:
    rows = []
    for implementation, file_format, weight_dtype in CASES:
        if file_format not in args.formats or implementation not in args.implementations:
            continue
        models = pathlib.Path(args.models)
        warm_page_cache((models / TEXT_ENCODER_FILE,) if implementation == "pack-text-encoder"
                        else file_pair(models, file_format))
        command = [sys.executable, "-m", "benchmarks.load_memory", "--child", implementation, file_format,
                   weight_dtype or "-", "--models", args.models, "--comfyui", args.comfyui,
                   "--compute-dtype", args.compute_dtype, "--pack-root", args.pack_root]
        child = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        result_lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        if child.returncode != 0 or not result_lines:
            print(child.stdout[-2000:], child.stderr[-4000:], file=sys.stderr)
            raise RuntimeError(f"case {implementation} {file_format} {weight_dtype} failed (exit {child.returncode})")
        rows.append(json.loads(result_lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def print_table(rows: list[dict], compute_dtype: str) -> None:
    print(f"\nLoading the cond + uncond DiT pair (the text encoder alone for pack-text-encoder; compute dtype: "
          f"{compute_dtype}); RssAnon above the pre-load level")
    print(f"{'implementation':<19}{'file':<6}{'weight_dtype':<14}{'params':<32}{'load s':>8}{'peak GiB':>10}"
          f"{'held GiB':>10}{'peak/held':>10}{'+ file GiB':>12}{'weights GiB':>13}")
    for row in rows:
        print(f"{row['implementation']:<19}{row['file_format']:<6}{row['weight_dtype']:<14}"
              f"{','.join(row['parameter_dtypes']):<32}{row['seconds']:>8.1f}{row['peak_gib']:>10.2f}"
              f"{row['held_gib']:>10.2f}{row['peak_gib'] / max(row['held_gib'], 1e-9):>10.2f}"
              f"{row['held_file_gib']:>12.2f}{row['weights_gib']:>13.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-models", metavar="DIR", help="write the stand-in files into DIR and exit")
    parser.add_argument("--layers", type=int, default=4, help="blocks in the stand-in files (full model: 34)")
    parser.add_argument("--tiny", action="store_true", help="--make-models at the unit tests' tiny widths")
    parser.add_argument("--models", default="/tmp/loadmem", help="folder holding the stand-in files")
    parser.add_argument("--comfyui", default=str(DEFAULT_COMFYUI))
    parser.add_argument("--pack-root", default=str(REPO_ROOT), help="checkout of the pack to load")
    parser.add_argument("--compute-dtype", choices=("host", "bf16"), default="bf16")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--implementations", nargs="+", choices=("pack", "native", "pack-text-encoder"),
                        default=["pack", "native", "pack-text-encoder"],
                        help="native needs the released widths (it reads its dimensions off the shapes)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", nargs=3, metavar=("IMPLEMENTATION", "FILE_FORMAT", "WEIGHT_DTYPE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_models:
        make_models(pathlib.Path(args.make_models), args.layers, args.tiny)
        return 0
    if args.child:
        args.implementation, args.file_format, weight_dtype = args.child
        args.weight_dtype = None if weight_dtype == "-" else weight_dtype
        print(json.dumps(run_case(args)), flush=True)
        return 0
    rows = run_all(args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"compute_dtype": args.compute_dtype, "rows": rows}, indent=1))
    print_table(rows, args.compute_dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
