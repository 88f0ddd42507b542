"""Rotary position embedding: the interleaved multi-axis MRoPE of the Ideogram 4 DiT (spec A.5), and the rotation
and frequencies the Qwen3-VL text encoder shares with it.

Positions are ``(t, h, w)`` integer triples. Image tokens sit at ``65536 + (0, row, col)``, where bfloat16 keeps
only 8 significant bits (every position in [65536, 65791] rounds to 65536) and TF32 only 11, so positions and angle
products are always formed in float32 by an element-wise multiply, with autocast disabled. cos/sin are returned
in float32; the caller casts them to its activation dtype, and :func:`apply_rotary` rotates in that dtype, as the
official model does.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def rope_inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """``1 / theta ** (2j / head_dim)`` for j < head_dim/2, float32 on the CPU.

    Evaluated with the official model's float32 ops on the CPU (where it builds its buffer at construction), so
    the values match it bit for bit whatever device the model later runs on.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
    return 1.0 / (theta ** exponents)


def mrope_axis_of_pairs(head_dim: int, mrope_section: tuple[int, int, int]) -> torch.Tensor:
    """Which position axis (0 = t, 1 = h, 2 = w) drives each of the head_dim/2 frequency pairs.

    Official rule: start from t everywhere, then pairs ``range(1, 3*h, 3)`` take h and ``range(2, 3*w, 3)``
    take w. With head_dim 256 and (24, 20, 20): 20 pairs h, 20 pairs w, the other 88 t.
    """
    axis = torch.zeros(head_dim // 2, dtype=torch.long)
    for axis_index in (1, 2):
        axis[axis_index: 3 * mrope_section[axis_index]: 3] = axis_index
    return axis


class MRoPE(nn.Module):
    """cos/sin tables for the interleaved MRoPE. Holds no weights and no buffers (nothing to load or cast)."""

    def __init__(self, head_dim: int, theta: float, mrope_section: tuple[int, int, int]) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"MRoPE: head_dim must be even, got {head_dim}.")
        self.head_dim = head_dim
        self.theta = theta
        self.mrope_section = tuple(mrope_section)
        # Plain attributes, not buffers: a host's model.to(dtype) must not round them behind our back; the
        # rounding the official model gets from its own .to(dtype) is applied explicitly (frequency_dtype).
        self._inv_freq_cpu = rope_inverse_frequencies(head_dim, theta)
        self._axis_cpu = mrope_axis_of_pairs(head_dim, self.mrope_section)
        if int(self._axis_cpu.numel()) != head_dim // 2 or 3 * max(self.mrope_section[1:]) > head_dim // 2:
            raise ValueError(
                f"MRoPE: mrope_section={self.mrope_section} needs frequency pairs beyond head_dim/2={head_dim // 2}.")
        self._device_tables: dict = {}

    def _tables(self, device: torch.device, frequency_dtype: torch.dtype | None):
        """(inv_freq float32, axis index) on ``device``; inv_freq rounded through ``frequency_dtype`` if given."""
        key = (device, frequency_dtype)
        tables = self._device_tables.get(key)
        if tables is None:
            tables = (self.inverse_frequencies(frequency_dtype).to(device), self._axis_cpu.to(device))
            self._device_tables[key] = tables
        return tables

    def inverse_frequencies(self, frequency_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (head_dim/2,) float32 frequencies on the CPU, rounded through ``frequency_dtype`` if given."""
        if frequency_dtype is None:
            return self._inv_freq_cpu
        return self._inv_freq_cpu.to(frequency_dtype).to(torch.float32)

    def forward(self, positions: torch.Tensor, frequency_dtype: torch.dtype | None = None):
        """positions (B, L, 3) integer -> (cos, sin), each (B, L, head_dim) float32.

        ``frequency_dtype``: round the inverse frequencies through this dtype first (the official model's
        ``model.to(bfloat16)`` does this to its buffer); None keeps full float32 frequencies (diffusers, ComfyUI).
        """
        if positions.ndim != 3 or positions.shape[-1] != 3:
            raise ValueError(f"MRoPE: positions must have shape (B, L, 3), got {tuple(positions.shape)}.")
        if positions.is_floating_point():
            raise TypeError(f"MRoPE: positions must be integers (float loses image positions), got {positions.dtype}.")
        inv_freq, axis = self._tables(positions.device, frequency_dtype)
        with torch.autocast(device_type=positions.device.type, enabled=False):
            # Gathering each pair's axis first and multiplying once equals the official "three products, then
            # interleave": every angle is the single float32 product pos_axis * inv_freq[j].
            pair_positions = positions.index_select(-1, axis).to(torch.float32)  # (B, L, head_dim/2), exact ints
            angles = pair_positions * inv_freq
            cos_half = angles.cos()
            sin_half = angles.sin()
        return torch.cat((cos_half, cos_half), dim=-1), torch.cat((sin_half, sin_half), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``concat(-x[..., D/2:], x[..., :D/2])``."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in x's dtype (each product and the sum rounded, as official).

    x (..., D); cos/sin broadcastable to x and already in x's dtype.
    """
    return x * cos + rotate_half(x) * sin
