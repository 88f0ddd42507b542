"""The official Ideogram 4 sampler presets (spec §D.5), with guidance in SAMPLING order.

Guidance order — read this before comparing with other code:

* Here, ``SamplerPreset.guidance[k]`` is the guidance weight of sampling step ``k``: index 0 is the FIRST
  step (noisiest, ``t = t_min``), the last index is the final "polish" step. This matches
  :func:`ideogram4.schedule.logit_normal_schedule`, :func:`ideogram4.sampler.sample` and diffusers.
* The official code (``ideogram4/sampler_configs.py``) stores the same schedules in LOOP-INDEX order:
  index 0 is the LAST (polish) step, because its loop runs ``i = steps-1 .. 0``. That is why it writes
  ``(3.0,) * 3 + (7.0,) * 45`` where we write ``(7.0,) * 45 + (3.0,) * 3``. Same schedule, reversed
  representation.

This module is the one source of the presets: the nodes' preset combo (by :attr:`SamplerPreset.label`), the
example workflows (tools/build_workflows.py) and the README's preset line (checked by a unit test) come from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerPreset:
    """A named (steps, mu, std, guidance) bundle; ``guidance`` has ``steps`` entries in sampling order.
    ``name`` is the official config's name, ``label`` the one artists pick on the nodes."""

    name: str
    label: str
    steps: int
    mu: float
    std: float
    guidance: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"SamplerPreset {self.name!r}: steps must be >= 1, got {self.steps}.")
        if len(self.guidance) != self.steps:
            raise ValueError(
                f"SamplerPreset {self.name!r}: guidance has {len(self.guidance)} entries, "
                f"expected one per step ({self.steps})."
            )
        if not all(math.isfinite(g) and g >= 0 for g in self.guidance):
            raise ValueError(f"SamplerPreset {self.name!r}: guidance values must be finite and >= 0.")


def _main_then_polish(main_steps: int, polish_steps: int) -> tuple[float, ...]:
    # Every official preset uses guidance 7 for the main steps and 3 for the final polish steps.
    return (7.0,) * main_steps + (3.0,) * polish_steps


V4_QUALITY_48 = SamplerPreset("V4_QUALITY_48", "Quality 48", steps=48, mu=0.0, std=1.5, guidance=_main_then_polish(45, 3))
V4_DEFAULT_20 = SamplerPreset("V4_DEFAULT_20", "Default 20", steps=20, mu=0.0, std=1.75, guidance=_main_then_polish(18, 2))
V4_TURBO_12 = SamplerPreset("V4_TURBO_12", "Turbo 12", steps=12, mu=0.5, std=1.75, guidance=_main_then_polish(11, 1))

# In the order the nodes offer them, the default first.
PRESETS: dict[str, SamplerPreset] = {preset.name: preset for preset in (V4_DEFAULT_20, V4_QUALITY_48, V4_TURBO_12)}
DEFAULT_PRESET = V4_DEFAULT_20
