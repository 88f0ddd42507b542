"""Inputs shared by several nodes (preset, steps, mu, std, size, guidance) and their resolution to core values.

A preset fixes steps, mu, std and the guidance list (the official sampler configs, :mod:`ideogram4.presets`);
"Custom" takes them from the steps / mu / std / guidance_schedule inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.guidance import format_guidance_schedule, parse_guidance_schedule
from ..ideogram4.presets import DEFAULT_PRESET as DEFAULT_SAMPLER_PRESET
from ..ideogram4.presets import PRESETS as OFFICIAL_PRESETS
from ..ideogram4.presets import SamplerPreset

CATEGORY = "Ideogram 4"
CUSTOM = "Custom"
PRESETS: dict[str, SamplerPreset] = {preset.label: preset for preset in OFFICIAL_PRESETS.values()}
PRESET_NAMES = [*PRESETS, CUSTOM]
DEFAULT_PRESET = DEFAULT_SAMPLER_PRESET.label
MAX_SIZE = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF


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


def resolve_settings(preset: str, steps: int, mu: float, std: float, guidance_schedule: str) -> SamplingSettings:
    """Schedule parameters and guidance list of ``preset`` (see :func:`resolve_schedule`, :func:`resolve_guidance`)."""
    steps, mu, std = resolve_schedule(preset, steps, mu, std)
    return SamplingSettings(steps, mu, std, resolve_guidance(preset, steps, guidance_schedule))


def check_size(width: int, height: int) -> tuple[int, int]:
    """The token grid (height/16, width/16); a size that is not a positive multiple of 16 raises ValueError."""
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % PIXELS_PER_TOKEN:
            nearest = max(PIXELS_PER_TOKEN, round(value / PIXELS_PER_TOKEN) * PIXELS_PER_TOKEN)
            raise ValueError(
                f"Ideogram 4: {name} must be a positive multiple of {PIXELS_PER_TOKEN} pixels (one latent token is "
                f"{PIXELS_PER_TOKEN}x{PIXELS_PER_TOKEN} px), got {value}; use {nearest}."
            )
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
    return io.Int.Input("steps", default=DEFAULT_SAMPLER_PRESET.steps, min=1, max=500,
                        tooltip="Number of sampling steps. Used only when preset is Custom.")


def mu_input() -> io.Float.Input:
    return io.Float.Input("mu", default=DEFAULT_SAMPLER_PRESET.mu, min=-10.0, max=10.0, step=0.01,
                          tooltip="Mean of the logit-normal time schedule before the resolution shift. "
                                  "Used only when preset is Custom.")


def std_input() -> io.Float.Input:
    return io.Float.Input("std", default=DEFAULT_SAMPLER_PRESET.std, min=0.01, max=10.0, step=0.01,
                          tooltip="Spread of the logit-normal time schedule. Used only when preset is Custom.")


def guidance_input() -> io.String.Input:
    return io.String.Input(
        "guidance_schedule", default=format_guidance_schedule(DEFAULT_SAMPLER_PRESET.guidance), multiline=False,
        tooltip="Per-step guidance, first step first: one number for all steps ('7'), one number per step "
                "('7, 7, 3'), or runs VALUExCOUNT ('7x18,3x2'); the lengths must add up to steps. "
                "Used only when preset is Custom.")


def width_input() -> io.Int.Input:
    return io.Int.Input("width", default=1024, min=PIXELS_PER_TOKEN, max=MAX_SIZE, step=PIXELS_PER_TOKEN,
                        tooltip="Image width in pixels (a multiple of 16).")


def height_input() -> io.Int.Input:
    return io.Int.Input("height", default=1024, min=PIXELS_PER_TOKEN, max=MAX_SIZE, step=PIXELS_PER_TOKEN,
                        tooltip="Image height in pixels (a multiple of 16).")


def batch_size_input() -> io.Int.Input:
    return io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of images generated at once.")


def denoise_input(tooltip: str, optional: bool = False) -> io.Float.Input:
    return io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, optional=optional, tooltip=tooltip)


def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                        tooltip="Seed of the official noise (one torch.randn draw from a generator on the compute "
                                "device, as the official pipeline does; the same seed gives different noise on CPU "
                                "and GPU).")
