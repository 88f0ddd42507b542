"""Size limits of a generation, and the activation memory one DiT forward needs.

The official sizes reach 2048 x 2048 (16,384 image tokens). Attention cost grows with the square of the token
count, so a size far beyond that runs for hours inside one attention call; :data:`MAX_IMAGE_SIDE` (4096 px per
side, at most 65,536 image tokens) is a generous ceiling that callers refuse above.
"""

from __future__ import annotations

import math

from .constants import PIXELS_PER_TOKEN
from .dit_config import DiTConfig

MAX_IMAGE_SIDE = 4096
MAX_IMAGE_TOKENS = (MAX_IMAGE_SIDE // PIXELS_PER_TOKEN) ** 2  # 65,536


def size_problem(name: str, value: int, allow_zero: bool = False) -> str | None:
    """Why ``value`` is not a usable image side in pixels (``name`` is the input's name), or None when it is.

    A side must be a multiple of :data:`PIXELS_PER_TOKEN` (one latent token covers 16 x 16 px), at least one token
    (or exactly 0 where ``allow_zero``) and at most :data:`MAX_IMAGE_SIDE`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be a whole number of pixels, got {value!r}"
    if allow_zero and value == 0:
        return None
    if value < PIXELS_PER_TOKEN or value % PIXELS_PER_TOKEN:
        nearest = min(MAX_IMAGE_SIDE, max(PIXELS_PER_TOKEN, round(value / PIXELS_PER_TOKEN) * PIXELS_PER_TOKEN))
        zero = " (or 0)" if allow_zero else ""
        return (f"{name} must be a positive multiple of {PIXELS_PER_TOKEN} pixels{zero} (one latent token is "
                f"{PIXELS_PER_TOKEN}x{PIXELS_PER_TOKEN} px), got {value}; use {nearest}")
    if value > MAX_IMAGE_SIDE:
        return (f"{name} is {value} px, above the limit of {MAX_IMAGE_SIDE} px per side ({MAX_IMAGE_TOKENS:,} image "
                f"tokens at {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}; the official sizes reach 2048); use at most "
                f"{MAX_IMAGE_SIDE}")
    return None


def activation_bytes_per_token(config: DiTConfig, element_bytes: int) -> int:
    """Peak bytes of activations per sequence row inside one transformer block, with memory-efficient attention
    (no token x token score matrix): the residual stream and the block input, plus the larger of the attention
    branch (qkv, normed/rotated q and k, attention output) and the SwiGLU branch (w1 and w3 outputs, their
    product)."""
    hidden = config.hidden_size
    attention = 6 * hidden
    feed_forward = 3 * config.intermediate_size
    return (2 * hidden + max(attention, feed_forward)) * element_bytes


def activation_bytes(config: DiTConfig, batch: int, image_tokens: int, text_tokens: int, element_bytes: int) -> int:
    """Estimated peak activation memory of one DiT forward of ``batch`` sequences of text + image tokens."""
    return batch * (image_tokens + text_tokens) * activation_bytes_per_token(config, element_bytes)


def largest_square_side(config: DiTConfig, batch: int, text_tokens: int, element_bytes: int,
                        available_bytes: int) -> int:
    """The largest square side (pixels, a multiple of 16, at most :data:`MAX_IMAGE_SIDE`) whose activations fit
    in ``available_bytes``; 0 when not even one token does."""
    per_sequence_row = batch * activation_bytes_per_token(config, element_bytes)
    tokens = available_bytes // per_sequence_row - text_tokens
    if tokens < 1:
        return 0
    return min(MAX_IMAGE_SIDE, math.isqrt(tokens) * PIXELS_PER_TOKEN)
