"""FLUX.2 KL autoencoder (the Ideogram 4 VAE) with injectable layers, and the decode/encode entry points.

Architecture (spec E.1, same maths as the official ``autoencoder.py`` and diffusers ``AutoencoderKLFlux2``):
GroupNorm(32, eps 1e-6) + SiLU ResNet blocks, a single-head self-attention mid block, nearest-x2 upsampling,
asymmetric-padded stride-2 downsampling, ``quant_conv`` (1x1, 2z -> 2z) after the encoder and
``post_quant_conv`` (1x1, z -> z) before the decoder. Real model: widths (128, 256, 512, 512), 2 encoder / 3
decoder ResNet blocks per level, 32 latent channels, 8x downscale.

Canonical parameter names (this module's own ``state_dict``) are ComfyUI's in-memory FLUX.2 VAE layout, which
is BFL's layout with the two 1x1 quant convs at the top level:

    encoder.conv_in, encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut},
    encoder.down.{i}.downsample.conv,
    {encoder,decoder}.mid.{block_1,attn_1.{norm,q,k,v,proj_out},block_2}, {encoder,decoder}.{norm_out,conv_out},
    decoder.conv_in, decoder.up.{i}.block.{j}.*, decoder.up.{i}.upsample.conv, quant_conv, post_quant_conv

Level ``i`` is the resolution level (0 = full resolution) on both sides, so ``decoder.up.0`` is the last block
run. ``q``/``k``/``v``/``proj_out`` are 1x1 convolutions ``(C, C, 1, 1)`` as in BFL/official. The VAE's ``bn``
statistics are not part of the module: Ideogram de-normalises with its own constants (:mod:`ideogram4.latent`).
Other layouts (diffusers, BFL ``encoder.quant_conv``/``decoder.post_quant_conv``) are converted by
:mod:`ideogram4.vae_checkpoint`.

Numerics follow the official code where bf16 bits could differ: SiLU as ``x * sigmoid(x)``, attention via
``F.scaled_dot_product_attention`` on contiguous ``(B, 1, H*W, C)`` tensors, 1x1 convs for q/k/v.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .latent import (
    PATCH_SIZE,
    denormalize_latent,
    normalize_latent,
    patchify,
    unpatchify,
)
from .ops import resolve_operations


@dataclass(frozen=True)
class VAEConfig:
    """Shape of a FLUX.2-style KL autoencoder. Defaults are the real FLUX.2 / Ideogram 4 VAE.

    ``encoder_channels`` / ``decoder_channels`` are the widths per resolution level, level 0 first (the
    decoder may be narrower, as diffusers' ``decoder_block_out_channels`` allows). ``has_encoder=False`` builds
    a decoder-only model (for decoder-only files).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 32
    encoder_channels: tuple[int, ...] = (128, 256, 512, 512)
    decoder_channels: tuple[int, ...] = (128, 256, 512, 512)
    encoder_blocks_per_level: int = 2
    decoder_blocks_per_level: int = 3
    norm_groups: int = 32
    has_encoder: bool = True

    @property
    def downscale_factor(self) -> int:
        """Pixels per latent pixel along each axis (8 for the real model)."""
        return 2 ** (len(self.decoder_channels) - 1)


def _silu(x: torch.Tensor) -> torch.Tensor:
    # Written out like the official code: in bf16 this rounds differently from the fused F.silu.
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, norm_groups, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.norm1 = ops.GroupNorm(norm_groups, in_channels, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, dtype=dtype, device=device)
        self.norm2 = ops.GroupNorm(norm_groups, out_channels, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, dtype=dtype, device=device)
        if in_channels != out_channels:
            self.nin_shortcut = ops.Conv2d(in_channels, out_channels, 1, dtype=dtype, device=device)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_silu(self.norm1(x)))
        h = self.conv2(_silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all H*W positions (x + proj_out(attention(norm(x))))."""

    def __init__(self, channels, norm_groups, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.norm = ops.GroupNorm(norm_groups, channels, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.q = ops.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.k = ops.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.v = ops.Conv2d(channels, channels, 1, dtype=dtype, device=device)
        self.proj_out = ops.Conv2d(channels, channels, 1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = x.shape

        def as_sequence(t):  # (B, C, H, W) -> (B, 1, H*W, C), contiguous like the official rearrange
            return t.reshape(b, c, height * width).transpose(1, 2).unsqueeze(1).contiguous()

        q, k, v = as_sequence(self.q(h)), as_sequence(self.k(h)), as_sequence(self.v(h))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.squeeze(1).transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    def __init__(self, channels, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.conv = ops.Conv2d(channels, channels, 3, stride=2, padding=0, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right/bottom only: stride-2 conv over (0,1,0,1)-padded input, as BFL/diffusers.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.conv = ops.Conv2d(channels, channels, 3, stride=1, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels, norm_groups, dtype=None, device=None, operations=None):
        super().__init__()
        layer = dict(dtype=dtype, device=device, operations=operations)
        self.block_1 = ResnetBlock(channels, channels, norm_groups, **layer)
        self.attn_1 = AttentionBlock(channels, norm_groups, **layer)
        self.block_2 = ResnetBlock(channels, channels, norm_groups, **layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> ``(B, 2*latent_channels, H/f, W/f)`` (mean, logvar; before quant_conv)."""

    def __init__(self, config: VAEConfig, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        layer = dict(dtype=dtype, device=device, operations=operations)
        widths, groups = config.encoder_channels, config.norm_groups
        self.conv_in = ops.Conv2d(config.in_channels, widths[0], 3, stride=1, padding=1, dtype=dtype, device=device)
        self.down = nn.ModuleList()
        block_in = widths[0]
        for level, width in enumerate(widths):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(config.encoder_blocks_per_level):
                stage.block.append(ResnetBlock(block_in, width, groups, **layer))
                block_in = width
            if level != len(widths) - 1:
                stage.downsample = Downsample(block_in, **layer)
            self.down.append(stage)
        self.mid = MidBlock(block_in, groups, **layer)
        self.norm_out = ops.GroupNorm(groups, block_in, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.conv_out = ops.Conv2d(
            block_in, 2 * config.latent_channels, 3, stride=1, padding=1, dtype=dtype, device=device
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h)
            if level != len(self.down) - 1:
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(_silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``(B, latent_channels, h, w)`` (after post_quant_conv) -> image ``(B, out_channels, h*f, w*f)``."""

    def __init__(self, config: VAEConfig, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        layer = dict(dtype=dtype, device=device, operations=operations)
        widths, groups = config.decoder_channels, config.norm_groups
        block_in = widths[-1]
        self.conv_in = ops.Conv2d(config.latent_channels, block_in, 3, stride=1, padding=1, dtype=dtype, device=device)
        self.mid = MidBlock(block_in, groups, **layer)
        stages = [None] * len(widths)
        for level in reversed(range(len(widths))):  # built (and run) from the lowest resolution up
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(config.decoder_blocks_per_level):
                stage.block.append(ResnetBlock(block_in, widths[level], groups, **layer))
                block_in = widths[level]
            if level != 0:
                stage.upsample = Upsample(block_in, **layer)
            stages[level] = stage
        self.up = nn.ModuleList(stages)  # indexed by level: up[0] is full resolution, as in BFL
        self.norm_out = ops.GroupNorm(groups, block_in, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.conv_out = ops.Conv2d(block_in, config.out_channels, 3, stride=1, padding=1, dtype=dtype, device=device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block in stage.block:
                h = block(h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(_silu(self.norm_out(h)))


class Flux2AutoEncoder(nn.Module):
    """The FLUX.2 KL autoencoder in ComfyUI's key layout (see module docstring).

    ``decode(raw_latent (B, z, h, w)) -> (B, 3, h*f, w*f)``;
    ``encode_moments(image (B, 3, H, W)) -> (B, 2z, H/f, W/f)``.
    Inputs are used in the dtype they arrive in; the callers below cast them.
    """

    def __init__(self, config: VAEConfig = VAEConfig(), dtype=None, device=None, operations=None):
        super().__init__()
        for name in ("encoder_channels", "decoder_channels"):
            bad = [w for w in getattr(config, name) if w % config.norm_groups]
            if bad:
                raise ValueError(
                    f"VAEConfig.{name}={getattr(config, name)}: every width must be a multiple of "
                    f"norm_groups={config.norm_groups}"
                )
        ops = resolve_operations(operations)
        self.config = config
        z = config.latent_channels
        if config.has_encoder:
            self.encoder = Encoder(config, dtype=dtype, device=device, operations=operations)
            self.quant_conv = ops.Conv2d(2 * z, 2 * z, 1, dtype=dtype, device=device)
        else:
            self.encoder = None
            self.quant_conv = None
        self.decoder = Decoder(config, dtype=dtype, device=device, operations=operations)
        self.post_quant_conv = ops.Conv2d(z, z, 1, dtype=dtype, device=device)

    @property
    def downscale_factor(self) -> int:
        return self.config.downscale_factor

    def decode(self, raw_latent: torch.Tensor) -> torch.Tensor:
        """Raw (de-normalised) latent ``(B, z, h, w)`` -> pixels ``(B, 3, h*f, w*f)`` (roughly [-1, 1], unclamped)."""
        return self.decoder(self.post_quant_conv(raw_latent))

    def encode_moments(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in [-1, 1] -> posterior moments ``(B, 2z, H/f, W/f)``: mean, then log-variance."""
        if self.encoder is None:
            raise RuntimeError(
                "this VAE was loaded without an encoder (decoder-only file); load the full FLUX.2 VAE to encode images"
            )
        return self.quant_conv(self.encoder(image))

    def encode_mean(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` -> posterior mean ``(B, z, H/f, W/f)`` (the deterministic latent)."""
        return self.encode_moments(image)[:, : self.config.latent_channels]


# --- decode / encode entry points ----------------------------------------------------------------------------

# Tiled decoding, in raw-latent pixels (1 latent pixel = 8 image pixels for the real VAE). GroupNorm statistics
# and the mid-block attention are computed over the whole input, so every tile decodes with less context than
# the whole image and a tiled decode is never bit-identical to the untiled one (true of every tiled VAE
# decode); bigger tiles get closer. 128 latent px = 1024 image px. The 32 latent px (256 image px) overlap
# exceeds the decoder's convolutional reach (about 17 latent px: 11 at latent resolution, the rest in the
# upsampling levels), so the zero-padded tile borders fall inside the part of the cross-fade that is weighted
# down. Use tiling only when the untiled decode does not fit in memory.
DEFAULT_TILE_SIZE = 128
DEFAULT_TILE_OVERLAP = 32


def _weight_dtype(vae: nn.Module) -> torch.dtype:
    for p in vae.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def decode_raw_latent(
    vae: Flux2AutoEncoder, raw_latent: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Raw latent ``(B, z, h, w)`` -> pixels ``(B, 3, h*f, w*f)`` float32 (unclamped).

    The latent is cast to ``dtype`` (default: the VAE's weight dtype) before the decoder, like the official
    ``z.to(self.dtype)``; the output is cast back to float32.
    """
    dtype = dtype or _weight_dtype(vae)
    return vae.decode(raw_latent.to(dtype)).float()


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts covering ``[0, length)`` with consecutive overlaps of at least ``overlap``."""
    if length <= tile:
        return [0]
    count = -(-(length - tile) // (tile - overlap)) + 1
    return [(i * (length - tile)) // (count - 1) for i in range(count)]


def _axis_weights(starts: list[int], index: int, tile: int, scale: int, device) -> torch.Tensor:
    """Blend weights along one axis for tile ``index``: linear ramps over its overlaps with the neighbours."""
    weights = torch.ones(tile * scale, dtype=torch.float32, device=device)

    def ramp(n):  # n weights rising from 0.5/n to 1 - 0.5/n; a ramp and its mirror image sum to 1
        return (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n

    if index > 0:
        overlap = (starts[index - 1] + tile - starts[index]) * scale
        weights[:overlap] *= ramp(overlap)
    if index < len(starts) - 1:
        overlap = (starts[index] + tile - starts[index + 1]) * scale
        weights[tile * scale - overlap :] *= ramp(overlap).flip(0)
    return weights


def tiled_decode(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    raw_latent: torch.Tensor,
    upscale: int,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_TILE_OVERLAP,
) -> torch.Tensor:
    """Decode a raw latent ``(B, z, h, w)`` in overlapping tiles -> ``(B, C, h*upscale, w*upscale)`` float32.

    Tiles of ``tile_size`` latent pixels (clipped to the latent), placed by :func:`tile_starts` so that
    neighbours overlap by at least ``overlap`` latent pixels, are decoded one at a time with ``decode_fn``
    (``(B, z, th, tw) -> (B, C, th*upscale, tw*upscale)``). The decoded tiles are cross-faded: along each axis
    a tile's weight ramps linearly from ~0 to 1 across its overlap with the previous tile and back down across
    its overlap with the next one (on the decoded pixels, i.e. over ``overlap*upscale`` pixels); the weighted
    sum is divided by the summed weights. So every output pixel is a convex combination of the decodes of the
    tiles covering it: a pixel covered by one tile is that tile's output, a single tile covering the whole
    latent reproduces the untiled decode bit for bit, and the error against the untiled decode at a pixel is
    never larger than the worst error of the covering tiles.
    """
    if tile_size <= 0 or overlap < 0 or 2 * overlap >= tile_size:
        raise ValueError(
            f"tiled decode needs tile_size > 2 * overlap >= 0 (in latent pixels), got tile_size={tile_size}, "
            f"overlap={overlap}"
        )
    b, _, h, w = raw_latent.shape
    tile_h, tile_w = min(tile_size, h), min(tile_size, w)
    rows, cols = tile_starts(h, tile_h, overlap), tile_starts(w, tile_w, overlap)
    out = weight_sum = None
    for i, top in enumerate(rows):
        row_weights = _axis_weights(rows, i, tile_h, upscale, raw_latent.device)
        for j, left in enumerate(cols):
            decoded = decode_fn(raw_latent[:, :, top : top + tile_h, left : left + tile_w].contiguous()).float()
            if out is None:
                size = (h * upscale, w * upscale)
                out = torch.zeros(b, decoded.shape[1], *size, dtype=torch.float32, device=decoded.device)
                weight_sum = torch.zeros(size, dtype=torch.float32, device=decoded.device)
            col_weights = _axis_weights(cols, j, tile_w, upscale, raw_latent.device)
            weights = torch.outer(row_weights, col_weights).to(decoded.device)
            y, x = top * upscale, left * upscale
            out[:, :, y : y + tile_h * upscale, x : x + tile_w * upscale] += decoded * weights
            weight_sum[y : y + tile_h * upscale, x : x + tile_w * upscale] += weights
    return out / weight_sum


def decode_latent_tokens(
    vae: Flux2AutoEncoder,
    tokens: torch.Tensor,
    grid_h: int,
    grid_w: int,
    dtype: torch.dtype | None = None,
    *,
    device: torch.device | str | None = None,
    tiled: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
) -> torch.Tensor:
    """Normalised tokens ``(B, grid_h*grid_w, 128)`` -> pixels ``(B, 3, 16*grid_h, 16*grid_w)`` float32, [-1, 1].

    Official order (spec E.3/E.4): de-normalise with Ideogram's constants in float32 -> unpatchify -> cast to
    ``dtype`` (default: the VAE's weight dtype; the official pipeline uses bf16) -> post_quant_conv + decoder ->
    float32 -> clamp to [-1, 1]. ``device`` (default: the tokens' device) is where the latent is placed; the VAE
    must already be there. (16 px per token is the real VAE's 8x times the 2x2 patch.)
    ``tiled=True`` decodes in overlapping tiles (:func:`tiled_decode`, sizes in raw-latent pixels).
    """
    device = tokens.device if device is None else device
    raw = unpatchify(denormalize_latent(tokens.to(device)), grid_h, grid_w)
    if tiled:
        decoded = tiled_decode(
            lambda z: decode_raw_latent(vae, z, dtype), raw, vae.downscale_factor, tile_size, tile_overlap
        )
    else:
        decoded = decode_raw_latent(vae, raw, dtype)
    return decoded.clamp(-1.0, 1.0)


def encode_image_to_tokens(
    vae: Flux2AutoEncoder,
    image: torch.Tensor,
    dtype: torch.dtype | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixels ``(B, 3, H, W)`` in [-1, 1] -> normalised tokens ``(B, (H/16)*(W/16), 128)`` float32.

    Posterior mean (encoder + quant_conv, first half of the moments) in ``dtype`` (default: the VAE's weight
    dtype) -> float32 -> patchify -> Ideogram normalisation; the inverse path of :func:`decode_latent_tokens`,
    for img2img. A ComfyUI IMAGE converts with :func:`ideogram4.latent.image_to_model_input`. H and W must be
    multiples of ``PATCH_SIZE * vae.downscale_factor`` (16 for the real VAE).
    """
    multiple = PATCH_SIZE * vae.downscale_factor
    if image.ndim != 4 or image.shape[2] % multiple or image.shape[3] % multiple:
        raise ValueError(
            f"expected an image (B, 3, H, W) with H and W multiples of {multiple}, got {tuple(image.shape)}; "
            f"resize or crop the image to a multiple of {multiple} pixels first"
        )
    device = image.device if device is None else device
    dtype = dtype or _weight_dtype(vae)
    mean = vae.encode_mean(image.to(device=device, dtype=dtype)).float()
    return normalize_latent(patchify(mean))
