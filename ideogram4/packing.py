"""Packing latent tokens and text features into the DiT's sequence layout (spec A.3, official ``_build_inputs``).

Conditional layout of sample b, with ``Lt`` = the longest prompt of the batch and ``n_b`` its own length:

    rows                      x        features   position (t, h, w)            segment  indicator
    [0, Lt - n_b)   padding   0        ignored    (0, 0, 0)                      -1       0
    [Lt - n_b, Lt)  text      0        Qwen       (p, p, p), p = 0 .. n_b - 1     1       3
    [Lt, Lt + N)    image     latent   -          65536 + (0, row, col)           1       2

Text is padded on the left so every sample's image block starts at row Lt. When all prompts have the same
length there is no padding, every token sees every token and ``attention_mask`` is None (full attention, the
fast path); otherwise it is the boolean segment mask ``seg_i == seg_j``. The unconditional sequence is the image
block alone, without text. Text features arrive left-padded (as the text encoder returns them), so they already
sit in this layout and are passed on as a view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .constants import (
    IMAGE_POSITION_OFFSET,
    LLM_TOKEN_INDICATOR,
    OUTPUT_IMAGE_INDICATOR,
    SEQUENCE_PADDING_INDICATOR,
)

_TEXT_SEGMENT = 1  # real text and image tokens of a sample share one segment


@dataclass(frozen=True)
class PackedSequence:
    """One batch in the DiT layout; the fields are ``Ideogram4DiT.forward``'s arguments (t aside).

    x (B, L, C) in the latent dtype; text_features (B, Lt, F) in the given dtype, rows aligned with the text
    region (padding rows may hold anything: the DiT zeroes every row whose indicator is not 3), or None (no text);
    positions (B, L, 3), indicators (B, L) int64; attention_mask (B, 1, L, L) bool or None (the official segment
    mask: padding rows see only padding; None where a sample has no padding, so every token sees every token);
    image_slice selects the N image rows of dim 1.
    """

    x: torch.Tensor
    text_features: torch.Tensor | None
    positions: torch.Tensor
    indicators: torch.Tensor
    attention_mask: torch.Tensor | None
    image_slice: slice


def image_positions(grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """(grid_h * grid_w, 3) int64 positions ``65536 + (0, row, col)`` in raster order (token = row * grid_w + col)."""
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    return torch.stack((torch.zeros_like(rows), rows, cols), dim=1) + IMAGE_POSITION_OFFSET


def segment_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids -> (B, 1, L, L) bool, True where the two tokens share a segment."""
    return (segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)).unsqueeze(1)


def _check_latent(latent_tokens: torch.Tensor, grid_h: int, grid_w: int) -> None:
    if latent_tokens.ndim != 3:
        raise ValueError(f"packing: latent_tokens must be (B, N, C), got shape {tuple(latent_tokens.shape)}.")
    if grid_h <= 0 or grid_w <= 0 or latent_tokens.shape[1] != grid_h * grid_w:
        raise ValueError(
            f"packing: latent_tokens has {latent_tokens.shape[1]} tokens but grid {grid_h}x{grid_w} needs "
            f"{grid_h * grid_w} (one token per 16x16 pixels).")


def pack_unconditional(latent_tokens: torch.Tensor, grid_h: int, grid_w: int) -> PackedSequence:
    """The unconditional model's input: image tokens only, no text (features None = all zero), no mask.

    latent_tokens (B, N, C) with N = grid_h * grid_w, raster order.
    """
    _check_latent(latent_tokens, grid_h, grid_w)
    batch, count, _ = latent_tokens.shape
    device = latent_tokens.device
    positions = image_positions(grid_h, grid_w, device).unsqueeze(0).expand(batch, count, 3)
    return PackedSequence(
        x=latent_tokens,
        text_features=None,
        positions=positions,
        indicators=torch.full((batch, count), OUTPUT_IMAGE_INDICATOR, dtype=torch.long, device=device),
        attention_mask=None,
        image_slice=slice(0, count),
    )


def pack_conditional(latent_tokens: torch.Tensor, text_features: torch.Tensor, text_lengths: list[int] | None,
                     grid_h: int, grid_w: int) -> PackedSequence:
    """The conditional model's input ``[left padding][text][image]``.

    Args:
        latent_tokens: (B, N, C), N = grid_h * grid_w, raster order.
        text_features: (B, n, F) LEFT-padded, the official layout that ``ideogram4.text_encoder`` returns: sample
            b's real tokens are its LAST ``text_lengths[b]`` rows. Rows before them are ignored (zeroed by the
            DiT), so nothing is copied: the packed features are a view of the last max(text_lengths) rows.
        text_lengths: real token count per sample, or None when all n rows are real for every sample.
        grid_h, grid_w: image token grid (pixels / 16).
    """
    _check_latent(latent_tokens, grid_h, grid_w)
    batch, count, channels = latent_tokens.shape
    if text_features.ndim != 3 or text_features.shape[0] != batch:
        raise ValueError(
            f"pack_conditional: text_features must be (B={batch}, n, F), got shape {tuple(text_features.shape)}.")
    available = text_features.shape[1]
    if text_lengths is None:
        lengths = [available] * batch
    else:
        lengths = [int(n) for n in text_lengths]
        if len(lengths) != batch or any(n < 0 or n > available for n in lengths):
            raise ValueError(
                f"pack_conditional: text_lengths={list(text_lengths)} must give one length in [0, {available}] "
                f"per sample (batch {batch}).")
    text_length = max(lengths)
    device = latent_tokens.device
    total = text_length + count
    packed_features = text_features[:, available - text_length:]

    if all(n == text_length for n in lengths):
        text_positions = torch.arange(text_length, device=device).unsqueeze(-1).expand(text_length, 3)
        positions = torch.cat((text_positions, image_positions(grid_h, grid_w, device)), dim=0)
        positions = positions.unsqueeze(0).expand(batch, total, 3)
        indicators = torch.full((batch, total), OUTPUT_IMAGE_INDICATOR, dtype=torch.long, device=device)
        indicators[:, :text_length] = LLM_TOKEN_INDICATOR
        attention_mask = None
    else:
        positions = torch.zeros((batch, total, 3), dtype=torch.long, device=device)
        positions[:, text_length:] = image_positions(grid_h, grid_w, device)
        indicators = torch.zeros((batch, total), dtype=torch.long, device=device)
        indicators[:, text_length:] = OUTPUT_IMAGE_INDICATOR
        segment_ids = torch.full((batch, total), SEQUENCE_PADDING_INDICATOR, dtype=torch.long, device=device)
        segment_ids[:, text_length:] = _TEXT_SEGMENT
        for b, n in enumerate(lengths):
            start = text_length - n
            positions[b, start:text_length] = torch.arange(n, device=device).unsqueeze(-1)
            indicators[b, start:text_length] = LLM_TOKEN_INDICATOR
            segment_ids[b, start:text_length] = _TEXT_SEGMENT
        attention_mask = segment_attention_mask(segment_ids)

    x = torch.cat((latent_tokens.new_zeros((batch, text_length, channels)), latent_tokens), dim=1)
    return PackedSequence(
        x=x,
        text_features=packed_features,
        positions=positions,
        indicators=indicators,
        attention_mask=attention_mask,
        image_slice=slice(text_length, total),
    )


def left_align_text_features(text_features: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Move each sample's real text rows to the end, the official left padding :func:`pack_conditional` expects.

    Args:
        text_features: (B, n, F) with real and padding rows in any order (ComfyUI pads on the right).
        text_mask: (B, n), true/nonzero on real rows.
    Returns:
        (features (B, n, F) with zeros before each sample's real rows, kept in their order; lengths list[int]).
    """
    mask = text_mask.reshape(text_features.shape[0], -1).bool()
    if mask.shape[1] != text_features.shape[1]:
        raise ValueError(f"left_align_text_features: mask {tuple(text_mask.shape)} does not match text features "
                         f"{tuple(text_features.shape)}; expected one mask entry per text row")
    lengths = [int(n) for n in mask.sum(dim=1).tolist()]
    aligned = torch.zeros_like(text_features)
    for b, n in enumerate(lengths):
        if n:
            aligned[b, -n:] = text_features[b][mask[b]]
    return aligned, lengths
