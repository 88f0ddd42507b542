"""Resolution-shifted logit-normal time schedule of the official Ideogram 4 pipeline.

Time convention (model time, spec §D.1): ``t = 0`` is pure noise, ``t = 1`` is clean data,
``x_t = t * x0 + (1 - t) * noise``. The schedule is returned in SAMPLING order: ascending times
``t_0 = t_min, ..., t_steps = t_max``; step ``k`` integrates from ``times[k]`` to ``times[k + 1]``.

Faithful to the official ``LogitNormalSchedule`` / ``get_schedule_for_resolution`` /
``make_step_intervals`` (spec §D.2, G.2 item 7):

* ``u`` is a **float32** ``linspace(0, 1, steps + 1)``;
* the warp ``T(u) = clamp(1 - expit(mean + std * ndtri(u)), t_min, t_max)`` runs in float64 and is
  rounded to float32;
* ``mean = mu + 0.5 * ln(H * W / 512**2)`` (pixel-count shift);
* the last time is ``t_max = 0.99944722``, not 1: the official sampler never forces a final step to
  clean data (diffusers and ComfyUI native do; we follow the official code).
"""

from __future__ import annotations

import math
import numbers

import torch

from .constants import PIXELS_PER_TOKEN

# Clamp bounds from the official logSNR limits (logSNR_max = 18, logSNR_min = -15), as Python doubles.
# The schedule's first/last times are these values rounded to float32.
T_MIN: float = 1.0 / (1.0 + math.exp(0.5 * 18.0))
T_MAX: float = 1.0 / (1.0 + math.exp(0.5 * -15.0))

# The official resolution shift is relative to a 512 x 512 image.
_REFERENCE_PIXELS = 512 * 512


def resolution_shifted_mean(mu: float, width: int, height: int) -> float:
    """Logit-normal mean for an image of ``width x height`` pixels: ``mu + 0.5 * ln(W*H / 512**2)``."""
    return mu + 0.5 * math.log((width * height) / _REFERENCE_PIXELS)


def logit_normal_schedule(steps: int, mu: float, std: float, width: int, height: int) -> list[float]:
    """Sampling times for ``steps`` Euler steps at ``width x height`` pixels.

    Returns ``steps + 1`` Python floats (each exactly a float32 value), ascending from ``float32(T_MIN)``
    to ``float32(T_MAX)``. Raises ``ValueError`` for steps < 1, a non-finite ``mu``, ``std <= 0`` or a
    width/height that is not a positive multiple of 16.
    """
    _validate(steps, mu, std, width, height)
    steps, width, height = int(steps), int(width), int(height)
    mean = resolution_shifted_mean(float(mu), width, height)
    std = float(std)

    # float32 u exactly like the official make_step_intervals; everything after that in float64.
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32).to(torch.float64)
    warped = 1.0 - torch.special.expit(mean + std * torch.special.ndtri(u))
    times = warped.clamp(T_MIN, T_MAX).to(torch.float32)

    # The official T(u) decreases with u and the loop walks u from 1 down to 0; reversing gives the
    # same times in the order they are visited.
    return [float(value) for value in reversed(times.tolist())]


def _validate(steps: int, mu: float, std: float, width: int, height: int) -> None:
    if not _is_integer(steps) or steps < 1:
        raise ValueError(f"logit_normal_schedule: steps must be an integer >= 1, got {steps!r}.")
    if not _is_finite_number(mu):
        raise ValueError(f"logit_normal_schedule: mu must be a finite number, got {mu!r}.")
    if not _is_finite_number(std) or std <= 0:
        raise ValueError(f"logit_normal_schedule: std must be a finite number > 0, got {std!r}.")
    for name, size in (("width", width), ("height", height)):
        if not _is_integer(size) or size <= 0 or size % PIXELS_PER_TOKEN:
            raise ValueError(
                f"logit_normal_schedule: {name} must be a positive multiple of {PIXELS_PER_TOKEN} pixels "
                f"(one latent token is {PIXELS_PER_TOKEN}x{PIXELS_PER_TOKEN} px), got {size!r}; "
                f"round it to a multiple of {PIXELS_PER_TOKEN}, e.g. 1024."
            )


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
