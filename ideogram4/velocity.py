"""One model evaluation per branch: pack, cast to the compute dtype, run the DiT, keep the image rows.

These are the ``cond_velocity`` / ``uncond_velocity`` callables the sampler integrates (z and the result are
float32 latent tokens (B, N, C) in raster order; t is the model time in [0, 1], 0 = noise).
"""

from __future__ import annotations

import torch

from .packing import PackedSequence, pack_conditional, pack_unconditional

_FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                    "float8_e5m2fnuz") if hasattr(torch, name))


def default_compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of ``model.input_proj.weight`` when it is a plain float type, else bfloat16 (fp8 or quantised
    weights are computed in bf16, as the official fp8 pipeline does)."""
    weight = getattr(getattr(model, "input_proj", None), "weight", None)
    dtype = getattr(weight, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype not in _FP8_DTYPES:
        return dtype
    return torch.bfloat16


def _run(model, packed: PackedSequence, t: float, dtype: torch.dtype | None,
         transformer_options: dict | None = None) -> torch.Tensor:
    dtype = default_compute_dtype(model) if dtype is None else dtype
    x = packed.x
    # Official: t is a float32 (B,) tensor of the schedule value; the model rounds it to the compute dtype.
    timestep = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
    features = packed.text_features
    if features is not None:
        features = features.to(device=x.device, dtype=dtype)
    out = model(x.to(dtype), timestep, features, packed.positions, packed.indicators,
                packed.attention_mask, transformer_options=transformer_options)
    return out[:, packed.image_slice].to(torch.float32)


def conditional_velocity(model, z: torch.Tensor, t: float, text_features: torch.Tensor,
                         text_lengths: list[int] | None, grid_h: int, grid_w: int,
                         dtype: torch.dtype | None = None, transformer_options: dict | None = None) -> torch.Tensor:
    """Conditional DiT on ``[text][image]``: z (B, N, C) float32 -> velocity (B, N, C) float32.

    text_features (B, n, F) left-padded (official layout): sample b's real tokens are its last ``text_lengths[b]``
    rows (None: all rows are real);
    ``dtype`` is the compute dtype (default :func:`default_compute_dtype`); ``transformer_options`` goes to the
    model's forward unchanged (a host's per-call options).
    """
    packed = pack_conditional(z, text_features, text_lengths, grid_h, grid_w)
    return _run(model, packed, t, dtype, transformer_options)


def unconditional_velocity(model, z: torch.Tensor, t: float, grid_h: int, grid_w: int,
                           dtype: torch.dtype | None = None, transformer_options: dict | None = None) -> torch.Tensor:
    """Unconditional DiT on the image tokens alone: z (B, N, C) float32 -> velocity (B, N, C) float32."""
    packed = pack_unconditional(z, grid_h, grid_w)
    return _run(model, packed, t, dtype, transformer_options)
