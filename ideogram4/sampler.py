"""Euler flow-matching sampler with asymmetric CFG and per-step guidance (official Ideogram 4 loop).

Shapes: latents, noise and velocities are ``(B, N, C)`` float32 token tensors (``C = 128``, ``N`` image
tokens). Times are model times (``t = 0`` noise, ``t = 1`` data) in SAMPLING order, as returned by
:func:`ideogram4.schedule.logit_normal_schedule`; ``guidance[k]`` belongs to step ``k`` (first step first).

Per step ``k`` with ``t = times[k]``, ``s = times[k + 1]`` (spec §D.3/D.4, G.2 item 6), all in float32:

    v = g * v_cond(z, t) + (1 - g) * v_uncond(z, t)       # g: float32 0-dim tensor, as official
    z = z + v * (s - t)                                   # (s - t) in Python double, applied as fp32 scalar

The arithmetic is written the way the official pipeline writes it so that PyTorch rounds identically
(``s`` and ``t`` are float32 values, so their double difference is exact and rounds once to fp32 when it
multiplies the fp32 velocity).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence

import torch

from .constants import TOKEN_CHANNELS

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor], None]


def make_noise(batch: int, num_tokens: int, seed: int, device: torch.device | str, channels: int = TOKEN_CHANNELS) -> torch.Tensor:
    """Initial noise ``(batch, num_tokens, channels)`` float32, exactly as the official pipeline draws it.

    One ``torch.randn`` call from a generator on ``device`` seeded with ``seed`` — on CUDA that is the CUDA
    Philox stream, so the same seed gives different noise on CPU and GPU (as in the official code).
    """
    for name, value in (("batch", batch), ("num_tokens", num_tokens), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"make_noise: {name} must be an integer >= 1, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"make_noise: seed must be an integer, got {seed!r}.")
    batch, num_tokens, channels, seed = int(batch), int(num_tokens), int(channels), int(seed)
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn((batch, num_tokens, channels), dtype=torch.float32, generator=generator, device=device)


@dataclasses.dataclass(frozen=True)
class InpaintRegion:
    """What an inpainting run keeps: ``mask`` (B or 1, N, C or 1) float32, 1 = re-sample, 0 = keep ``clean``
    (B, N, C) (the input latent's tokens), fractional values blend; ``noise`` (B, N, C) is the run's noise.

    The kept region follows the noised input ``t * clean + (1 - t) * noise`` at each step and its velocity is that
    path's own ``clean - noise`` (ComfyUI's inpainting, which swaps in the input for the prediction there); after
    the last step it is ``clean`` itself.
    """

    mask: torch.Tensor
    clean: torch.Tensor
    noise: torch.Tensor

    def noised(self, z: torch.Tensor, t: float) -> torch.Tensor:
        """``z`` with the kept region replaced by the input noised to model time ``t``."""
        return z * self.mask + (t * self.clean + (1.0 - t) * self.noise) * (1.0 - self.mask)

    def velocity(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` with the kept region's velocity replaced by that of its noised-input path."""
        return v * self.mask + (self.clean - self.noise) * (1.0 - self.mask)

    def final(self, z: torch.Tensor) -> torch.Tensor:
        """The result: ``z`` where the mask is 1, the input latent where it is 0 (bit for bit)."""
        return z * self.mask + self.clean * (1.0 - self.mask)


def sample(
    cond_velocity: Velocity,
    uncond_velocity: Velocity,
    times: Sequence[float],
    guidance: Sequence[float],
    noise_or_start: torch.Tensor,
    callback: StepCallback | None = None,
    inpaint: InpaintRegion | None = None,
) -> torch.Tensor:
    """Integrate ``noise_or_start`` ``(B, N, C)`` fp32 from ``times[0]`` to ``times[-1]``; returns the fp32 latent.

    ``cond_velocity(z, t)`` / ``uncond_velocity(z, t)`` get the current latent and ``t`` as a Python float and
    must return fp32 velocities shaped like ``z``. ``callback(step_index, latent)`` runs after every step
    (``step_index`` = 0 .. len(guidance) - 1, ``latent`` = the state after that step) for progress, previews
    and interruption: an exception it raises propagates and stops sampling. The input tensor is not modified.
    ``inpaint`` re-samples only its masked region (:class:`InpaintRegion`); without it the loop is the official one.
    """
    times = _checked_times(times)
    _check_guidance(guidance, len(times) - 1)
    _check_latent("noise_or_start", noise_or_start)
    if inpaint is not None:
        _check_inpaint(inpaint, noise_or_start)

    z = noise_or_start
    # Like the official loop: the whole list as one fp32 tensor, each step's weight a 0-dim fp32 tensor
    # (so 1 - g is computed in fp32, not in Python double).
    guidance_fp32 = torch.as_tensor(list(guidance), dtype=torch.float32, device=z.device)
    with torch.no_grad():
        for step in range(len(times) - 1):
            t, s = times[step], times[step + 1]
            if inpaint is not None:
                z = inpaint.noised(z, t)
            v_cond = _checked_velocity("cond_velocity", cond_velocity(z, t), z)
            v_uncond = _checked_velocity("uncond_velocity", uncond_velocity(z, t), z)
            g = guidance_fp32[step]
            v = g * v_cond + (1.0 - g) * v_uncond
            if inpaint is not None:
                v = inpaint.velocity(v)
            z = z + v * (s - t)
            if callback is not None:
                callback(step, z)
    return z if inpaint is None else inpaint.final(z)


def img2img_start(
    times: Sequence[float],
    guidance: Sequence[float],
    denoise: float,
    clean_tokens: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[list[float], list[float], torch.Tensor]:
    """Tail of a schedule for partial denoising, and the latent to start it from.

    Keeps the last ``k = round(steps * denoise)`` steps (Python ``round``: halves go to the even count), i.e.
    ``times[-(k + 1):]`` and ``guidance[-k:]``, so the polish steps are always kept.

    * If every step is kept (``denoise = 1``, or ``k`` rounds up to ``steps``) the start latent is the noise
      itself, exactly like the official text-to-image pipeline: NOT ``t_min * x0 + (1 - t_min) * noise``.
      The result then equals text-to-image with the same seed; the input image is ignored.
    * Otherwise the start is the flow-matching interpolation at the first kept time ``t``:
      ``t * clean_tokens + (1 - t) * noise`` in fp32 (``t`` and ``1 - t`` used as fp32 scalars).

    ``clean_tokens`` (normalised latent tokens) and ``noise`` are ``(B, N, C)``; ``clean_tokens`` is cast to
    noise's dtype/device. Returns ``(times_tail, guidance_tail, start_latent)``.
    """
    times = _checked_times(times)
    steps = len(times) - 1
    _check_guidance(guidance, steps)
    _check_latent("noise", noise)
    if isinstance(denoise, bool) or not isinstance(denoise, numbers.Real) or not 0.0 < denoise <= 1.0:
        raise ValueError(f"img2img_start: denoise must be in (0, 1], got {denoise!r}.")
    if tuple(clean_tokens.shape) != tuple(noise.shape):
        raise ValueError(
            f"img2img_start: clean_tokens shape {tuple(clean_tokens.shape)} does not match noise shape "
            f"{tuple(noise.shape)}; encode the input image at the sampling width/height and batch size."
        )

    kept = round(steps * denoise)
    if kept < 1:
        raise ValueError(
            f"img2img_start: denoise {denoise} keeps {kept} of {steps} steps; use denoise >= {1.0 / steps:.4g} "
            f"or more steps."
        )
    times_tail = list(times[steps - kept :])
    guidance_tail = [float(g) for g in guidance[steps - kept :]]
    if kept == steps:
        return times_tail, guidance_tail, noise

    t = times_tail[0]
    clean = clean_tokens.to(dtype=noise.dtype, device=noise.device)
    return times_tail, guidance_tail, t * clean + (1.0 - t) * noise


def _checked_times(times: Sequence[float]) -> list[float]:
    values = [float(t) for t in times]
    if len(values) < 2:
        raise ValueError(f"sampler: times needs at least 2 entries (steps + 1), got {len(values)}.")
    if not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in values):
        raise ValueError(f"sampler: times must be finite model times in [0, 1], got {values}.")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(
            "sampler: times must be ascending model times (t = 0 noise ... t = 1 data) in sampling order, "
            f"as logit_normal_schedule returns them; got {values}. Sigmas (1 - t) must be converted first."
        )
    return values


def _check_inpaint(inpaint: InpaintRegion, z: torch.Tensor) -> None:
    for name in ("clean", "noise"):
        value = getattr(inpaint, name)
        if not isinstance(value, torch.Tensor) or value.shape != z.shape or value.dtype != torch.float32:
            raise ValueError(f"sampler: inpaint.{name} must be a float32 tensor shaped like the latent "
                             f"{tuple(z.shape)}, got {_describe(value)}.")
    mask = inpaint.mask
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.float32 or mask.ndim != 3 or any(
            m not in (1, n) for m, n in zip(mask.shape, z.shape)) or mask.shape[1] != z.shape[1]:
        raise ValueError(f"sampler: inpaint.mask must be a float32 (B or 1, {z.shape[1]}, C or 1) tensor, "
                         f"got {_describe(mask)}.")


def _check_guidance(guidance: Sequence[float], steps: int) -> None:
    if len(guidance) != steps:
        raise ValueError(
            f"sampler: guidance has {len(guidance)} entries but times describe {steps} steps; "
            "pass one guidance weight per step (len(times) - 1), first step first."
        )


def _check_latent(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3 or tensor.dtype != torch.float32:
        raise ValueError(f"sampler: {name} must be a (B, N, C) float32 tensor, got {_describe(tensor)}.")


def _checked_velocity(name: str, velocity: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    # A bf16 velocity would silently make the guidance blend bf16 (a 0-dim fp32 g does not promote it).
    if not isinstance(velocity, torch.Tensor) or velocity.shape != z.shape or velocity.dtype != torch.float32:
        raise ValueError(
            f"sampler: {name} must return a float32 tensor shaped like the latent {tuple(z.shape)}, "
            f"got {_describe(velocity)}."
        )
    return velocity


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return type(value).__name__
