"""Inputs shared by several nodes (preset, steps, mu, std, size, guidance) and their resolution to core values.

A preset fixes steps, mu, std and the guidance list (the official sampler configs, :mod:`ideogram4.presets`);
"Custom" takes them from the steps / mu / std / guidance_schedule inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from comfy_api.latest import io

from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.guidance import GuidanceScheduleError, format_guidance_schedule, parse_guidance_schedule
from ..ideogram4.limits import MAX_IMAGE_SIDE, size_problem
from ..ideogram4.presets import DEFAULT_PRESET as DEFAULT_SAMPLER_PRESET
from ..ideogram4.presets import PRESETS as OFFICIAL_PRESETS
from ..ideogram4.presets import SamplerPreset

CATEGORY = "Ideogram 4"
CUSTOM = "Custom"
PRESETS: dict[str, SamplerPreset] = {preset.label: preset for preset in OFFICIAL_PRESETS.values()}
PRESET_NAMES = [*PRESETS, CUSTOM]
DEFAULT_PRESET = DEFAULT_SAMPLER_PRESET.label
MAX_SIZE = MAX_IMAGE_SIDE
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_STEPS = 500
MU_RANGE = (-10.0, 10.0)
STD_RANGE = (0.01, 10.0)
DEFAULT_GUIDANCE_SCHEDULE = format_guidance_schedule(DEFAULT_SAMPLER_PRESET.guidance)  # "7x18,3x2"


@dataclass(frozen=True)
class SamplingSettings:
    """Resolved schedule parameters: ``guidance`` has ``steps`` entries in sampling order (first step first)."""

    steps: int
    mu: float
    std: float
    guidance: list[float]


def _preset(preset: str) -> SamplerPreset | None:
    """The named official preset, None for "Custom"; an unknown name raises ValueError."""
    if preset in PRESETS:
        return PRESETS[preset]
    if preset != CUSTOM:
        raise ValueError(f"Ideogram 4: unknown preset {preset!r}; choose one of {PRESET_NAMES}.")
    return None


def resolve_schedule(preset: str, steps: int, mu: float, std: float) -> tuple[int, float, float]:
    """(steps, mu, std) of the preset, or the given ones for "Custom"."""
    chosen = _preset(preset)
    if chosen is not None:
        return chosen.steps, chosen.mu, chosen.std
    return int(steps), float(mu), float(std)


def resolve_guidance(preset: str, steps: int, guidance_schedule: str) -> list[float]:
    """The preset's guidance list, or for "Custom" ``guidance_schedule`` parsed for ``steps`` steps (a malformed
    one raises :class:`ideogram4.guidance.GuidanceScheduleError` saying what form is expected)."""
    chosen = _preset(preset)
    if chosen is not None:
        return list(chosen.guidance)
    return parse_guidance_schedule(guidance_schedule, int(steps))


def resolve_settings(preset: str, steps: int, mu: float, std: float, guidance_schedule: str,
                     node: str = "Ideogram 4 Sampler") -> SamplingSettings:
    """Schedule parameters and guidance list of ``preset`` (see :func:`resolve_schedule`, :func:`resolve_guidance`);
    a problem :func:`schedule_problems` finds raises ValueError naming ``node`` and the input."""
    raise_problems(node, schedule_problems(preset, steps, mu, std))  # the guidance is checked by its parser
    steps, mu, std = resolve_schedule(preset, steps, mu, std)
    return SamplingSettings(steps, mu, std, resolve_guidance(preset, steps, guidance_schedule))


def validation_result(node: str, problems: list[str]) -> bool | str:
    """What a node's ``validate_inputs`` returns: True, or one message ``"<node>: <problem>; <problem>."``
    (ComfyUI answers the queued prompt with HTTP 400 and shows it on the node)."""
    return f"{node}: " + "; ".join(problems) + "." if problems else True


def raise_problems(node: str, problems: list[str]) -> None:
    """The same check when the node runs (for values fed by links): ValueError with that message."""
    if problems:
        raise ValueError(validation_result(node, problems))


def _number_problem(name: str, value, low: float, high: float, integer: bool = False) -> str | None:
    """Why ``value`` is not a number in [low, high] (an integer if ``integer``), or None. None values (inputs fed
    by a link, unknown when the prompt is queued) pass."""
    if value is None:
        return None
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        return f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}"
    if not math.isfinite(value):
        return f"{name} is {value}, which is not a finite number; set a value from {low} to {high}"
    if not low <= value <= high:
        return f"{name} is {value}, outside {low} .. {high}"
    return None


def schedule_problems(preset: str | None, steps=None, mu=None, std=None, guidance_schedule=None) -> list[str]:
    """Input-only problems of the schedule inputs (unknown preset, steps/mu/std out of range or not finite, a
    malformed guidance schedule under Custom), as sentences naming the input; None = not known yet (a link)."""
    problems = []
    if preset is not None and preset not in PRESET_NAMES:
        problems.append(f"preset {preset!r} is not one of {PRESET_NAMES}")
    problems += [problem for problem in (
        _number_problem("steps", steps, 1, MAX_STEPS, integer=True),
        _number_problem("mu", mu, *MU_RANGE),
        _number_problem("std", std, *STD_RANGE)) if problem]
    if preset == CUSTOM and guidance_schedule is not None and isinstance(steps, int) and 1 <= steps <= MAX_STEPS:
        try:
            parse_guidance_schedule(guidance_schedule, steps)
        except GuidanceScheduleError as error:
            problems.append(f"guidance_schedule: {error}".rstrip("."))
    return problems


def size_problems(**sizes) -> list[str]:
    """Input-only problems of image sizes given as ``name=value`` (see :func:`ideogram4.limits.size_problem`;
    None = fed by a link, checked when the node runs)."""
    return [problem for name, value in sizes.items() if value is not None
            for problem in [size_problem(name, value)] if problem]


def ignored_guidance_note(preset: str, guidance_schedule: str | None) -> str | None:
    """A note when a guidance schedule other than the default was typed under a preset, which ignores it."""
    chosen = PRESETS.get(preset)
    if chosen is None or guidance_schedule is None or guidance_schedule.strip() in ("", DEFAULT_GUIDANCE_SCHEDULE):
        return None
    try:
        if parse_guidance_schedule(guidance_schedule, chosen.steps) == list(chosen.guidance):
            return None
    except GuidanceScheduleError:
        pass
    return (f"guidance_schedule {guidance_schedule!r} is ignored: preset {preset!r} uses its own schedule. Choose "
            f"preset Custom to use it.")


def check_size(width: int, height: int, node: str = "Ideogram 4") -> tuple[int, int]:
    """The token grid (height/16, width/16); a size that is not a positive multiple of 16 or is above
    :data:`MAX_SIZE` raises ValueError naming ``node`` and the input."""
    raise_problems(node, size_problems(width=width, height=height))
    return height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN


# --- input definitions (one place, so every node shows the same defaults and tooltips) ------------------------

def model_pair_inputs() -> list:
    """The two transformers and the prompt's features: the first inputs of the Sampler and the Guider."""
    return [
        io.Model.Input("cond_model", tooltip="The conditional transformer (from Ideogram 4 DiT Loader)."),
        io.Model.Input("uncond_model", tooltip="The unconditional transformer (from Ideogram 4 DiT Loader)."),
        io.Conditioning.Input("conditioning", tooltip="The prompt's text features (Ideogram 4 Text Encode)."),
    ]


def preset_input() -> io.Combo.Input:
    return io.Combo.Input(
        "preset", options=PRESET_NAMES, default=DEFAULT_PRESET,
        tooltip="Official sampler preset (steps, mu, std and per-step guidance). 'Custom' uses the steps, mu, std "
                "and guidance_schedule inputs instead.")


def steps_input() -> io.Int.Input:
    return io.Int.Input("steps", default=DEFAULT_SAMPLER_PRESET.steps, min=1, max=MAX_STEPS,
                        tooltip="Number of sampling steps. Used only when preset is Custom.")


def mu_input() -> io.Float.Input:
    return io.Float.Input("mu", default=DEFAULT_SAMPLER_PRESET.mu, min=MU_RANGE[0], max=MU_RANGE[1], step=0.01,
                          tooltip="Mean of the logit-normal time schedule before the resolution shift. "
                                  "Used only when preset is Custom.")


def std_input() -> io.Float.Input:
    return io.Float.Input("std", default=DEFAULT_SAMPLER_PRESET.std, min=STD_RANGE[0], max=STD_RANGE[1], step=0.01,
                          tooltip="Spread of the logit-normal time schedule. Used only when preset is Custom.")


def guidance_input() -> io.String.Input:
    return io.String.Input(
        "guidance_schedule", default=DEFAULT_GUIDANCE_SCHEDULE, multiline=False,
        tooltip="Per-step guidance, first step first: one number for all steps ('7'), one number per step "
                "('7, 7, 3'), or runs VALUExCOUNT ('7x18,3x2'); the lengths must add up to steps. "
                "Used only when preset is Custom.")


def width_input() -> io.Int.Input:
    return io.Int.Input("width", default=1024, min=PIXELS_PER_TOKEN, max=MAX_SIZE, step=PIXELS_PER_TOKEN,
                        tooltip=f"Image width in pixels (a multiple of 16, at most {MAX_SIZE}).")


def height_input() -> io.Int.Input:
    return io.Int.Input("height", default=1024, min=PIXELS_PER_TOKEN, max=MAX_SIZE, step=PIXELS_PER_TOKEN,
                        tooltip=f"Image height in pixels (a multiple of 16, at most {MAX_SIZE}).")


def batch_size_input() -> io.Int.Input:
    return io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of images generated at once.")


def denoise_input(tooltip: str, optional: bool = False) -> io.Float.Input:
    return io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, optional=optional, tooltip=tooltip)


def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                        tooltip="Seed of the official noise (one torch.randn draw from a generator on the compute "
                                "device, as the official pipeline does; the same seed gives different noise on CPU "
                                "and GPU).")
