"""Speed and memory of one Ideogram 4 sampling step: the pack vs ComfyUI native vs diffusers.

    python -m benchmarks.dit_step --device cuda --config full --sizes 1024 2048 --json results.json
    python benchmarks/dit_step.py --device cpu --config small --sizes 256 512 --dtype fp32

What it does, in this order:
 1. builds the DiT of ``--config`` with random weights (seeded) for the conditional and the unconditional model,
    once, in ``--dtype``; the pack, ComfyUI native and diffusers models are given the SAME tensors (assigned, not
    copied), so three implementations cost one set of weights;
 2. correctness: at the first size, one conditional and one unconditional velocity from each implementation, and
    the relative error ``||a - b|| / ||b||`` of the pack against native and against diffusers (and of every pack
    variant against the plain pack). A pair fails above ``--tolerance`` (1e-2, meant for bf16) unless, in a
    low-precision dtype, the pack is at least as close as the other implementation to a float32 reference (the
    pack's maths in float32 on the same bf16-valued weights): at full depth bf16 rounding alone puts ~1.5e-2
    between any two implementations (measured on a CPU with 34 narrow blocks), so distance to exact maths is
    what separates a bug from rounding;
 3. timing: for every size and implementation, a step = conditional forward (text + image tokens) + unconditional
    forward (image tokens), each as that implementation is called per step by its own sampler, ``--warmup`` untimed
    steps, then the median of ``--repeats`` timed steps (synchronised), and the peak memory allocated on the GPU;
 4. prints the table last (median and best seconds, effective TFLOP/s of the median from :mod:`benchmarks.flops`,
    peak memory, speed-up of the median over native's) and writes everything to ``--json`` (rewritten after every measurement, so a run stopped half way
    keeps what it measured).

Conventions held fixed so that the three are comparable:
 * RoPE inverse frequencies in float32 for the pack (``rope_frequency_dtype=float32``), as native and diffusers
   keep them: the official rounding to bf16 moves angles by radians and would dominate the comparison;
 * t = 0.625 (exact in bf16, and 1 - (1 - t) == t in float32), so native's float32 timestep and the pack's and
   diffusers' bf16-rounded timestep are the same number;
 * one prompt of ``--text-tokens`` real tokens (no padding for the pack and native); diffusers pads the text to
   ``--diffusers-text-padding`` tokens (2048 = its pipeline's ``max_sequence_length`` default) because its pipeline
   does, and masks the padding;
 * ComfyUI native is called as ``BaseModel._apply_model`` calls it (see :mod:`benchmarks.native_comfy`), with
   ``comfy.ops.disable_weight_init`` (weights already in the compute dtype) unless ``--native-ops manual_cast``.

Exit status: 0 when every correctness check passed, 1 otherwise (the timings are still printed and written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch

from benchmarks import pack_levers
from benchmarks.flops import image_tokens_for, step_flops
from ideogram4.constants import (IMAGE_POSITION_OFFSET, LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR,
                                 SEQUENCE_PADDING_INDICATOR)
from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_config import DiTConfig
from ideogram4.packing import image_positions
from ideogram4.velocity import conditional_velocity, unconditional_velocity

CONFIGS = {
    "full": DiTConfig(),
    # Real head width (256) and the released MRoPE sections, everything else scaled down for a CPU.
    "small": DiTConfig(num_layers=4, num_attention_heads=4, attention_head_dim=256, intermediate_size=2688,
                       adaln_dim=128, llm_features_dim=13 * 896),
    # All 34 blocks and the real head width, narrow otherwise: how bf16 differences between the implementations grow
    # with depth, checked on a CPU.
    "deep": DiTConfig(num_layers=34, num_attention_heads=2, attention_head_dim=256, intermediate_size=1344,
                      adaln_dim=64, llm_features_dim=13 * 64),
    # The unit tests' size: seconds on a CPU, for smoke tests only.
    "tiny": DiTConfig(num_layers=2, num_attention_heads=2, attention_head_dim=64, intermediate_size=256,
                      adaln_dim=32, llm_features_dim=96, mrope_section=(12, 10, 10)),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CHECK_TIME = 0.625
# pack-comfyops: the pack's DiT built with comfy.ops.disable_weight_init layers, as the nodes build it inside ComfyUI
# for bf16 weights (needs ComfyUI importable, like native).
IMPLEMENTATIONS = ("pack", "pack-comfyops", "native", "diffusers")


# ---------------------------------------------------------------------------------------------------- weights

def random_state_dict(config: DiTConfig, seed: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Random weights in the official key layout, drawn on ``device`` (a full model never passes through the CPU).

    Scaled so activations stay O(1) through any depth: Linear weights N(0, 1/fan_in), biases N(0, 0.01), norm
    weights 1 + N(0, 0.01), indicator embedding N(0, 0.25).
    """
    shapes = {name: tuple(p.shape) for name, p in Ideogram4DiT(config, device="meta").state_dict().items()}
    generator = torch.Generator(device).manual_seed(seed)
    state = {}
    for name, shape in sorted(shapes.items()):
        value = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        if "norm" in name:
            value = value.mul_(0.1).add_(1.0)
        elif name.endswith(".bias"):
            value = value.mul_(0.1)
        elif name == "embed_image_indicator.weight":
            value = value.mul_(0.5)
        else:
            value = value.mul_(shape[1] ** -0.5)
        state[name] = value.to(dtype)
        del value
    return state


def build_pack_dit(config: DiTConfig, state: dict, dtype: torch.dtype, operations=None) -> Ideogram4DiT:
    """The pack's DiT on ``state``'s tensors; ``operations`` as a host passes them (None: plain torch.nn)."""
    model = Ideogram4DiT(config, dtype=dtype, device="meta", operations=operations,
                         rope_frequency_dtype=torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class _UpcastLinear(torch.nn.Linear):
    """Linear whose (bf16) weight is cast to the input's dtype at each call: float32 maths on bf16-valued weights."""

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


class _UpcastRMSNorm(torch.nn.RMSNorm):
    def forward(self, x):
        return torch.nn.functional.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


# The contract's operations= hook used for the float32 reference: same weights (shared), float32 activations.
UPCAST_OPERATIONS = SimpleNamespace(Linear=_UpcastLinear, RMSNorm=_UpcastRMSNorm, LayerNorm=torch.nn.LayerNorm,
                                    Embedding=torch.nn.Embedding, Conv2d=torch.nn.Conv2d,
                                    GroupNorm=torch.nn.GroupNorm)


def build_diffusers_dit(config: DiTConfig, state: dict):
    """diffusers' Ideogram4Transformer2DModel on the same tensors: q/k/v are row views of the fused qkv weight."""
    from diffusers import Ideogram4Transformer2DModel

    with torch.device("meta"):
        model = Ideogram4Transformer2DModel(
            in_channels=config.in_channels, num_layers=config.num_layers,
            attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size, adaln_dim=config.adaln_dim,
            llm_features_dim=config.llm_features_dim, rope_theta=config.rope_theta,
            mrope_section=config.mrope_section, norm_eps=config.norm_eps)
    converted = {}
    for name, value in state.items():
        if name.endswith(".attention.qkv.weight"):
            prefix = name[: -len("qkv.weight")]
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                converted[f"{prefix}{part}.weight"] = chunk
        elif ".attention.o." in name:
            converted[name.replace(".attention.o.", ".attention.to_out.0.")] = value
        else:
            converted[name] = value
    model.load_state_dict(converted, strict=True, assign=True)
    # The float32 inverse-frequency buffer is not in the state dict; rebuild the module where the weights live.
    rope = model.rotary_emb
    device = next(iter(state.values())).device
    model.rotary_emb = type(rope)(config.attention_head_dim, config.rope_theta, config.mrope_section).to(device)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- problems

@dataclass
class Problem:
    size: tuple[int, int]  # (width, height) in pixels
    grid_h: int
    grid_w: int
    z: torch.Tensor  # (B, N, C) float32 latent tokens
    features: torch.Tensor  # (B, n, F) float32 text features
    t: float = CHECK_TIME

    @property
    def image_tokens(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def label(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"


def make_problem(config: DiTConfig, width: int, height: int, text_tokens: int, batch: int, device, seed: int):
    image_tokens_for(width, height)  # validates the size
    generator = torch.Generator(device).manual_seed(seed)
    grid_h, grid_w = height // 16, width // 16
    z = torch.randn((batch, grid_h * grid_w, config.in_channels), generator=generator, device=device)
    features = torch.randn((batch, text_tokens, config.llm_features_dim), generator=generator, device=device)
    return Problem((width, height), grid_h, grid_w, z, features)


# ---------------------------------------------------------------------------------------------------- implementations

@dataclass
class Implementation:
    """One way to run the step: ``cond()`` and ``uncond()`` return velocities (B, N, C) float32 in the pack's
    convention for the problem given to ``prepare``."""

    name: str
    prepare: Callable[[Problem], tuple[Callable, Callable]]
    levers: pack_levers.Levers | None = None
    models: tuple = ()


def pack_implementation(name: str, cond_model, uncond_model, dtype, levers: pack_levers.Levers) -> Implementation:
    def prepare(problem: Problem):
        def cond():
            return conditional_velocity(cond_model, problem.z, problem.t, problem.features, None, problem.grid_h,
                                        problem.grid_w, dtype=dtype)

        def uncond():
            return unconditional_velocity(uncond_model, problem.z, problem.t, problem.grid_h, problem.grid_w,
                                          dtype=dtype)

        return cond, uncond

    return Implementation(name, prepare, levers, (cond_model, uncond_model))


def native_implementation(cond_model, uncond_model, dtype) -> Implementation:
    from benchmarks.native_comfy import native_velocity

    def prepare(problem: Problem):
        def cond():
            return native_velocity(cond_model, problem.z, problem.t, problem.features, problem.grid_h,
                                   problem.grid_w, dtype)

        def uncond():
            return native_velocity(uncond_model, problem.z, problem.t, None, problem.grid_h, problem.grid_w, dtype)

        return cond, uncond

    return Implementation("native", prepare)


def diffusers_inputs(problem: Problem, padded_text: int, dtype):
    """The packed inputs diffusers' pipeline builds once per image: text left-padded to ``padded_text`` tokens,
    features over the whole sequence (zeros on image rows), and the image-only slices for the unconditional pass."""
    batch, text, width = problem.features.shape
    padded_text = max(padded_text, text)
    pad = padded_text - text
    device = problem.z.device
    count = problem.image_tokens
    total = padded_text + count
    features = torch.zeros((batch, total, width), dtype=dtype, device=device)
    features[:, pad:padded_text] = problem.features.to(dtype)
    positions = torch.zeros((batch, total, 3), dtype=torch.long, device=device)
    positions[:, pad:padded_text] = torch.arange(text, device=device).unsqueeze(-1)
    positions[:, padded_text:] = image_positions(problem.grid_h, problem.grid_w, device)
    segments = torch.full((batch, total), SEQUENCE_PADDING_INDICATOR, dtype=torch.long, device=device)
    segments[:, pad:] = 1
    indicators = torch.zeros((batch, total), dtype=torch.long, device=device)
    indicators[:, pad:padded_text] = LLM_TOKEN_INDICATOR
    indicators[:, padded_text:] = OUTPUT_IMAGE_INDICATOR
    assert int(positions[0, -1, 0]) == IMAGE_POSITION_OFFSET
    uncond_features = torch.zeros((batch, count, width), dtype=dtype, device=device)
    return dict(text_padding=torch.zeros((batch, padded_text, problem.z.shape[-1]), device=device),
                features=features, positions=positions, segments=segments, indicators=indicators,
                uncond_features=uncond_features, padded_text=padded_text)


def diffusers_implementation(cond_model, uncond_model, dtype, padded_text: int) -> Implementation:
    def prepare(problem: Problem):
        inputs = diffusers_inputs(problem, padded_text, dtype)
        split = inputs["padded_text"]
        t_model = torch.full((problem.z.shape[0],), problem.t, device=problem.z.device).to(dtype)

        def cond():  # as the pipeline's denoising loop: cat, cast, forward, slice, float
            hidden = torch.cat([inputs["text_padding"], problem.z], dim=1).to(dtype)
            out = cond_model(hidden_states=hidden, timestep=t_model, encoder_hidden_states=inputs["features"],
                             position_ids=inputs["positions"], segment_ids=inputs["segments"],
                             indicator=inputs["indicators"], return_dict=False)[0]
            return out[:, split:].to(torch.float32)

        def uncond():
            out = uncond_model(hidden_states=problem.z.to(dtype), timestep=t_model,
                               encoder_hidden_states=inputs["uncond_features"],
                               position_ids=inputs["positions"][:, split:], segment_ids=inputs["segments"][:, split:],
                               indicator=inputs["indicators"][:, split:], return_dict=False)[0]
            return out.to(torch.float32)

        return cond, uncond

    return Implementation("diffusers", prepare)


# ---------------------------------------------------------------------------------------------------- measuring

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.to(torch.float64), reference.to(torch.float64)
    return float((value - reference).norm() / reference.norm())


class Runner:
    """One implementation ready to run steps on one problem: levers applied around every call (so runners of
    different pack variants can alternate on the same models), CUDA graphs captured once."""

    def __init__(self, implementation: Implementation, problem: Problem, device: torch.device):
        self.implementation = implementation
        self.levers = implementation.levers or pack_levers.Levers()
        if self.levers.compiled:
            # Dynamo's cache does not key on the SDPA backend context or the Inductor settings a graph was
            # compiled under: start afresh so that e.g. "compile" and "sdpa=cudnn+compile" each get their own.
            pack_levers.reset_compiled()
        cond, uncond = implementation.prepare(problem)
        with self._levers_applied():
            self._step = pack_levers.make_step(cond, uncond, self.levers, device)

    def _levers_applied(self):
        if self.implementation.levers is None:
            return contextlib.nullcontext()
        return pack_levers.applied(self.implementation.models, self.levers)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self._levers_applied():
            return self._step()


def velocities(implementation: Implementation, problem: Problem, device: torch.device):
    v_cond, v_uncond = Runner(implementation, problem, device)()
    synchronize(device)
    return v_cond.clone(), v_uncond.clone()


def time_steps(implementations: list[Implementation], problem: Problem, device: torch.device, warmup: int,
               repeats: int, interleaved: bool, log, on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Per implementation: median wall time of a step after warm-up, first-call time (compilation, graph capture),
    peak GPU memory.

    ``interleaved``: round-robin over the implementations (one step each per round) so that a machine shared with
    other work slows all of them alike; otherwise one implementation after the other (memory figures are exact
    only then: a CUDA graph's memory pool lives as long as its runner). ``on_row`` gets each finished row at once
    (sequential) so a run stopped half way keeps what it measured.
    """
    results = {implementation.name: {} for implementation in implementations}
    runners = {}
    compiled = [i.name for i in implementations if i.levers is not None and i.levers.compiled]
    if interleaved and len(compiled) > 1:
        log(f"{problem.label}: {', '.join(compiled)} each need their own compiled graphs; timing sequentially")
        interleaved = False

    def start(implementation):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            results[implementation.name]["resident"] = torch.cuda.memory_allocated(device)
        started = time.perf_counter()
        runner = Runner(implementation, problem, device)
        runner()
        synchronize(device)
        results[implementation.name]["first_call_seconds"] = time.perf_counter() - started
        for _ in range(max(warmup - 1, 0)):
            runner()
        synchronize(device)
        return runner

    def timed(implementation, runner):
        started = time.perf_counter()
        runner()
        synchronize(device)
        results[implementation.name].setdefault("seconds_all", []).append(time.perf_counter() - started)

    def finish(implementation):
        row = results[implementation.name]
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            row.update(peak_gib=peak / 2**30, step_gib=(peak - row["resident"]) / 2**30)
        runners.pop(implementation.name, None)

    def guarded(implementation, action):
        row = results[implementation.name]
        if "error" in row:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - an out-of-memory variant must not end the run
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            log(f"{problem.label} {implementation.name}: failed: {row['error']}")
            runners.pop(implementation.name, None)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def finished_row(implementation):
        row = results[implementation.name]
        row.pop("resident", None)
        if "error" not in row and "seconds" not in row:
            row["seconds"] = statistics.median(row["seconds_all"])
            row["seconds_min"] = min(row["seconds_all"])
            log(f"{problem.label} {implementation.name}: {row['seconds']:.4f} s (first call "
                f"{row['first_call_seconds']:.2f} s)")
        return {"size": problem.label, "implementation": implementation.name, **row}

    if interleaved:
        for implementation in implementations:
            guarded(implementation, lambda i=implementation: runners.__setitem__(i.name, start(i)))
        for _ in range(repeats):
            for implementation in implementations:
                guarded(implementation, lambda i=implementation: timed(i, runners[i.name]))
        for implementation in implementations:
            guarded(implementation, lambda i=implementation: finish(i))
    else:
        for implementation in implementations:
            def sequence(i=implementation):
                runner = start(i)
                for _ in range(repeats):
                    timed(i, runner)
                finish(i)
            guarded(implementation, sequence)
            on_row(finished_row(implementation))

    rows = []
    for implementation in implementations:
        rows.append(finished_row(implementation))
        if interleaved:
            on_row(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------------- report

def environment(device: torch.device) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "host": platform.node(), "cpu_count": os.cpu_count(), "processor": platform.processor()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["threads"] = torch.get_num_threads()
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if "comfyui_version" in sys.modules or "comfy" in sys.modules:
        try:
            import comfyui_version

            info["comfyui"] = comfyui_version.__version__
        except ImportError:
            pass
    return info


def format_table(rows: list[dict]) -> str:
    header = f"{'size':>10}  {'implementation':<28} {'step s':>9} {'best s':>9} {'TFLOP/s':>8} {'peak GiB':>9} " \
             f"{'step GiB':>9} {'x native':>8}"
    lines = [header, "-" * len(header)]
    native = {row["size"]: row["seconds"] for row in rows if row["implementation"] == "native" and "seconds" in row}
    for row in rows:
        if "seconds" not in row:
            lines.append(f"{row['size']:>10}  {row['implementation']:<28} {'failed: ' + row.get('error', '?')[:60]}")
            continue
        ratio = native.get(row["size"])
        ratio_text = f"{ratio / row['seconds']:8.3f}" if ratio else f"{'-':>8}"
        peak = f"{row['peak_gib']:9.2f}" if "peak_gib" in row else f"{'-':>9}"
        extra = f"{row['step_gib']:9.2f}" if "step_gib" in row else f"{'-':>9}"
        lines.append(f"{row['size']:>10}  {row['implementation']:<28} {row['seconds']:9.4f} "
                     f"{row['seconds_min']:9.4f} {row['tflops']:8.3g} {peak} {extra} {ratio_text}")
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--sizes", nargs="+", default=["1024", "2048"], help="square side or WxH, pixels")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--implementations", default="pack,native,diffusers",
                        help="comma list of pack, pack-comfyops (the pack on comfy.ops layers), native, diffusers")
    parser.add_argument("--pack-variants", default="",
                        help="comma list of extra pack variants, e.g. 'sdpa=cudnn,sdpa=flash,compile' "
                             "(see benchmarks/pack_levers.py)")
    parser.add_argument("--diffusers-text-padding", type=int, default=2048,
                        help="text length diffusers' pipeline pads to (its max_sequence_length)")
    parser.add_argument("--comfyui", default=None, help="ComfyUI source tree (default $COMFYUI_PATH or ~/comfy/ComfyUI)")
    parser.add_argument("--native-ops", choices=("disable_weight_init", "manual_cast"), default="disable_weight_init")
    parser.add_argument("--tolerance", type=float, default=1e-2)
    parser.add_argument("--check-only", action="store_true", help="correctness check, no timing")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the float32 reference forward of the check (low-precision dtypes only)")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--shared-uncond-weights", action="store_true",
                        help="one weight set for both models (halves memory; timings unchanged)")
    parser.add_argument("--schedule", choices=("auto", "sequential", "interleaved"), default="auto",
                        help="timing order: interleaved = round-robin over implementations (default on CPU, "
                             "robust on a shared machine); sequential = one after the other (default on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads); 1 avoids OpenMP spinning on a busy machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    return parser.parse_args(argv)


def check_weights_fit(config: DiTConfig, dtype: torch.dtype, device: torch.device, models: int) -> None:
    """Refuse early, with the numbers, when the random weights alone cannot fit (a full model is 18.6 GB in bf16)."""
    parameters = sum(p.numel() for p in Ideogram4DiT(config, device="meta").parameters())
    needed = models * parameters * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > 0.9 * available:
        raise SystemExit(
            f"dit_step: {models} x {parameters / 1e9:.2f} B parameters in {dtype} need {needed / 2**30:.1f} GiB, but "
            f"only {available / 2**30:.1f} GiB is free on {device}. Use --config small (CPU), --shared-uncond-weights, "
            "or a bigger device.")


def build_implementations(args, config, dtype, device, log) -> tuple[list[Implementation], dict, Implementation | None]:
    requested = [name.strip() for name in args.implementations.split(",") if name.strip()]
    unknown = set(requested) - set(IMPLEMENTATIONS)
    if unknown:
        raise SystemExit(f"--implementations: unknown {sorted(unknown)}; known: {', '.join(IMPLEMENTATIONS)}.")
    check_weights_fit(config, dtype, device, 1 if args.shared_uncond_weights else 2)
    started = time.perf_counter()
    cond_state = random_state_dict(config, args.seed, dtype, device)
    uncond_state = cond_state if args.shared_uncond_weights else random_state_dict(config, args.seed + 1, dtype,
                                                                                    device)
    log(f"random weights: {time.perf_counter() - started:.1f} s")
    skipped = {}
    implementations = []
    pack_cond, pack_uncond = build_pack_dit(config, cond_state, dtype), build_pack_dit(config, uncond_state, dtype)
    if "pack" in requested:
        implementations.append(pack_implementation("pack", pack_cond, pack_uncond, dtype, pack_levers.Levers()))
    for spec in filter(None, (s.strip() for s in args.pack_variants.split(","))):
        levers = pack_levers.parse_levers(spec)
        implementations.append(pack_implementation(f"pack+{spec}", pack_cond, pack_uncond, dtype, levers))
    if "pack-comfyops" in requested:
        try:
            from benchmarks.native_comfy import import_native_model_class

            comfy_ops = import_native_model_class(args.comfyui, device.type)[1].disable_weight_init
            comfy_models = [build_pack_dit(config, state, dtype, comfy_ops) for state in (cond_state, uncond_state)]
            implementations.append(pack_implementation("pack-comfyops", *comfy_models, dtype, pack_levers.Levers()))
        except Exception as error:  # noqa: BLE001 - reported in the table and the JSON
            skipped["pack-comfyops"] = f"{type(error).__name__}: {error}"
    if "native" in requested:
        try:
            from benchmarks.native_comfy import build_native_dit

            native = [build_native_dit(config, state, dtype, device, args.native_ops, args.comfyui)
                      for state in (cond_state, uncond_state)]
            implementations.append(native_implementation(*native, dtype))
        except Exception as error:  # noqa: BLE001 - reported in the table and the JSON
            skipped["native"] = f"{type(error).__name__}: {error}"
    if "diffusers" in requested:
        try:
            diffusers_models = [build_diffusers_dit(config, state) for state in (cond_state, uncond_state)]
            implementations.append(diffusers_implementation(*diffusers_models, dtype, args.diffusers_text_padding))
        except Exception as error:  # noqa: BLE001
            skipped["diffusers"] = f"{type(error).__name__}: {error}"
    for name, why in skipped.items():
        log(f"{name}: not available: {why}")
    reference = None
    if dtype != torch.float32 and not args.no_reference:
        # The pack's maths in float32 on the very same (bf16-valued) weights: the arbiter of the bf16 check.
        reference_models = [build_pack_dit(config, state, dtype, UPCAST_OPERATIONS)
                            for state in (cond_state, uncond_state)]
        reference = pack_implementation("float32 reference", *reference_models, torch.float32, pack_levers.Levers())
    return implementations, skipped, reference


def check(implementations, problem, device, tolerance, log, reference: Implementation | None = None) -> list[dict]:
    """Relative errors, cond and uncond: every pack variant and native and diffusers against the pack, native
    against diffusers, and (with ``reference``) every implementation against the float32 reference.

    A pair passes at ``tolerance``, or, when the reference exists, if the pack is at least as close to the float32
    maths as the other implementation (within 25 %): then their distance is rounding that both carry, not a
    difference in the maths (in bf16, 34 random blocks accumulate ~1.5e-2 between any two implementations).
    """
    outputs, rows = {}, []
    for implementation in implementations + ([reference] if reference is not None else []):
        try:
            outputs[implementation.name] = velocities(implementation, problem, device)
        except Exception as error:  # noqa: BLE001
            rows.append({"pair": implementation.name, "error": f"{type(error).__name__}: {error}", "passed": False})
            log(traceback.format_exc())
    exact = outputs.pop(reference.name, None) if reference is not None else None
    to_reference = {}
    if exact is not None:
        for name, value in outputs.items():
            for index, branch in enumerate(("cond", "uncond")):
                to_reference[name, branch] = relative_error(value[index], exact[index])
                rows.append({"pair": f"{name} vs float32", "branch": branch,
                             "relative_error": to_reference[name, branch], "passed": True, "informative": True})

    def pair(first, second, index, branch):
        a, b = outputs[first][index], outputs[second][index]
        error = relative_error(a, b)
        finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
        row = {"pair": f"{first} vs {second}", "branch": branch, "relative_error": error,
               "passed": finite and error <= tolerance}
        if finite and not row["passed"] and (first, branch) in to_reference and (second, branch) in to_reference:
            row["passed"] = to_reference[first, branch] <= 1.25 * to_reference[second, branch]
            row["passed_by"] = "closer to float32" if row["passed"] else None
        rows.append(row)

    if "pack" in outputs:
        for name in outputs:
            if name != "pack":
                for index, branch in enumerate(("cond", "uncond")):
                    pair("pack", name, index, branch)
    if "native" in outputs and "diffusers" in outputs:
        for index, branch in enumerate(("cond", "uncond")):
            pair("native", "diffusers", index, branch)
    return rows


def status_text(row: dict, tolerance: float) -> str:
    if row.get("informative"):
        return "(distance to exact maths)"
    if not row["passed"]:
        return f"FAIL (tolerance {tolerance:.0e})"
    return f"ok ({row['passed_by']})" if row.get("passed_by") else "ok"


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests): leave the thread count as found


def run(args) -> int:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    config = CONFIGS[args.config]

    def log(message):
        print(f"[dit_step] {message}", flush=True)

    results = {"environment": environment(device), "arguments": vars(args), "config": args.config,
               "dtype": args.dtype, "check": [], "timings": []}

    def save():
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(results, indent=2))

    implementations, skipped, reference = build_implementations(args, config, dtype, device, log)
    results["skipped"] = skipped
    results["environment"] = environment(device)  # again: knows ComfyUI's version once it is imported
    save()

    sizes = [parse_size(text) for text in args.sizes]
    problems = [make_problem(config, w, h, args.text_tokens, args.batch, device, args.seed + 100) for w, h in sizes]

    passed = True
    if not args.skip_check:
        rows = check(implementations, problems[0], device, args.tolerance, log, reference)
        results["check"] = rows
        save()
        passed = all(row["passed"] for row in rows)
        for row in rows:
            detail = f"{row['relative_error']:.3e}" if "relative_error" in row else row.get("error")
            log(f"check {problems[0].label} {row['pair']:<34} {row.get('branch', ''):<6} {detail} "
                f"{status_text(row, args.tolerance)}")

    if not args.check_only:
        interleaved = args.schedule == "interleaved" or (args.schedule == "auto" and device.type == "cpu")
        for problem in problems:
            flops = step_flops(config, problem.image_tokens, args.text_tokens, args.batch)
            def record(row, flops=flops):
                row["step_flops"] = flops
                if "seconds" in row:
                    row["tflops"] = flops / row["seconds"] / 1e12
                results["timings"].append(row)
                save()

            time_steps(implementations, problem, device, args.warmup, args.repeats, interleaved, log, record)

    print()
    print(f"Ideogram 4 DiT step ({args.config} config, {args.dtype}, {args.text_tokens} text tokens, batch "
          f"{args.batch}) on {results['environment'].get('gpu', results['environment']['processor'] or 'CPU')}, "
          f"torch {torch.__version__}, {results['environment']['date']}")
    for row in results["check"]:
        detail = f"{row['relative_error']:.3e}" if "relative_error" in row else row.get("error")
        print(f"  check {row['pair']:<34} {row.get('branch', ''):<6} {detail} {status_text(row, args.tolerance)}")
    for name, why in skipped.items():
        print(f"  {name}: not run ({why[:200]})")
    if results["timings"]:
        print(format_table(results["timings"]))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
