"""The Ideogram 4 single-stream DiT (spec A.4-A.8), with the official key names.

One packed sequence per sample, ``[left padding][text tokens][image tokens]`` (see :mod:`ideogram4.packing`):

    h   = input_proj(x * img) * img + text * llm_cond_proj(llm_cond_norm(features * text)) + embed_image_indicator[img]
    a   = silu(adaln_proj(t_embedding(t)))                       shared conditioning, (B, 1, adaln_dim)
    h   = 34 x block(h, a)                                       RMSNorm sandwich blocks, MRoPE attention, SwiGLU
    out = final_layer.linear(layer_norm(h) * (1 + final_layer.adaln_modulation(silu(a))))

Compute dtype: every activation (residual stream included) is in the dtype of ``x`` as passed to ``forward``;
the caller casts (a host may keep fp8 weights and compute in bf16, so the weights never decide it). RoPE
angles are float32 (see :mod:`ideogram4.rope`); the output is returned in float32.

Layers come from ``operations`` (see :mod:`ideogram4.ops`) and are always called as modules, so a host can
cast or stream every weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .constants import LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR
from .dit_config import DiTConfig
from .ops import resolve_operations
from .rope import MRoPE, apply_rotary

_TIMESTEP_INPUT_SCALE = 1e4  # the model time t in [0, 1] is embedded as the scalar 1e4 * t


def timestep_sinusoid(scaled_t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (..., ) float32 -> (..., dim) float32, sin half first.

    Frequencies ``exp(-ln(1e4) * i / (half - 1))`` for i < half: note ``half - 1``, so the last frequency is
    exactly 1e-4 (official ``_sinusoidal_embedding``).
    """
    half = dim // 2
    step = math.log(1e4) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=scaled_t.device) * -step)
    angles = scaled_t.to(torch.float32).unsqueeze(-1) * frequencies
    embedding = torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """Official "EmbedScalar": t (B,) or (B, L) in [0, 1] -> (B, hidden) or (B, L, hidden) in ``dtype``."""

    def __init__(self, hidden_size: int, dtype=None, device=None, operations=None) -> None:
        super().__init__()
        ops = resolve_operations(operations)
        self.hidden_size = hidden_size
        self.mlp_in = ops.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device)
        self.mlp_out = ops.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # The official model casts t to its compute dtype before embedding it, so t is effectively quantised
        # (bf16: 0.000123395 -> 0.000123024); the sinusoid itself is float32.
        t = t.to(dtype).to(torch.float32)
        embedding = timestep_sinusoid(_TIMESTEP_INPUT_SCALE * t, self.hidden_size).to(dtype)
        return self.mlp_out(F.silu(self.mlp_in(embedding)))


class Attention(nn.Module):
    """Self-attention with a fused qkv projection, per-head q/k RMSNorm and MRoPE."""

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=None) -> None:
        super().__init__()
        ops = resolve_operations(operations)
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.attention_head_dim
        self.qkv = ops.Linear(hidden, 3 * hidden, bias=False, dtype=dtype, device=device)
        self.norm_q = ops.RMSNorm(self.head_dim, eps=config.qk_norm_eps, dtype=dtype, device=device)
        self.norm_k = ops.RMSNorm(self.head_dim, eps=config.qk_norm_eps, dtype=dtype, device=device)
        self.o = ops.Linear(hidden, hidden, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, hidden); cos/sin (B, L, 1, head_dim) in x's dtype; attention_mask (B, 1, L, L) bool or None."""
        batch, length, hidden = x.shape
        # qkv output columns are [q | k | v], each head-major (head * head_dim + d).
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).unbind(dim=2)
        q = apply_rotary(self.norm_q(q), cos, sin)
        k = apply_rotary(self.norm_k(k), cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask)
        return self.o(out.transpose(1, 2).reshape(batch, length, hidden))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=None) -> None:
        super().__init__()
        ops = resolve_operations(operations)
        hidden, inner = config.hidden_size, config.intermediate_size
        self.w1 = ops.Linear(hidden, inner, bias=False, dtype=dtype, device=device)
        self.w2 = ops.Linear(inner, hidden, bias=False, dtype=dtype, device=device)
        self.w3 = ops.Linear(hidden, inner, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Scale-and-gate modulated block with RMSNorm before and after each branch (no shift term)."""

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=None) -> None:
        super().__init__()
        ops = resolve_operations(operations)
        hidden = config.hidden_size
        self.attention = Attention(config, dtype=dtype, device=device, operations=operations)
        self.feed_forward = FeedForward(config, dtype=dtype, device=device, operations=operations)
        self.attention_norm1 = ops.RMSNorm(hidden, eps=config.norm_eps, dtype=dtype, device=device)
        self.attention_norm2 = ops.RMSNorm(hidden, eps=config.norm_eps, dtype=dtype, device=device)
        self.ffn_norm1 = ops.RMSNorm(hidden, eps=config.norm_eps, dtype=dtype, device=device)
        self.ffn_norm2 = ops.RMSNorm(hidden, eps=config.norm_eps, dtype=dtype, device=device)
        # Output chunks in this order: attention scale, attention gate, MLP scale, MLP gate.
        self.adaln_modulation = ops.Linear(config.adaln_dim, 4 * hidden, bias=True, dtype=dtype, device=device)

    def forward(self, h: torch.Tensor, adaln_input: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        scale_attn, gate_attn, scale_mlp, gate_mlp = self.adaln_modulation(adaln_input).chunk(4, dim=-1)
        attn = self.attention(self.attention_norm1(h) * (1.0 + scale_attn), cos, sin, attention_mask)
        h = h + torch.tanh(gate_attn) * self.attention_norm2(attn)
        mlp = self.feed_forward(self.ffn_norm1(h) * (1.0 + scale_mlp))
        return h + torch.tanh(gate_mlp) * self.ffn_norm2(mlp)


class FinalLayer(nn.Module):
    """Affine-free LayerNorm, scale modulation from silu(adaln_input), projection back to in_channels."""

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=None) -> None:
        super().__init__()
        ops = resolve_operations(operations)
        hidden = config.hidden_size
        self.eps = config.final_norm_eps
        self.linear = ops.Linear(hidden, config.in_channels, bias=True, dtype=dtype, device=device)
        self.adaln_modulation = ops.Linear(config.adaln_dim, hidden, bias=True, dtype=dtype, device=device)

    def forward(self, h: torch.Tensor, adaln_input: torch.Tensor) -> torch.Tensor:
        # adaln_input is already silu(adaln_proj(.)); the second silu here is in the official model too.
        scale = 1.0 + self.adaln_modulation(F.silu(adaln_input))
        return self.linear(F.layer_norm(h, (h.shape[-1],), eps=self.eps) * scale)


class Ideogram4DiT(nn.Module):
    """The Ideogram 4 transformer (conditional and unconditional models share it).

    ``rope_frequency_dtype``: the dtype the RoPE inverse frequencies are rounded through. None (default) rounds
    them to the compute dtype of each call, as the official loaders do (``model.to(bfloat16)`` casts the buffer;
    at image positions near 65536 this moves many angles by radians, so it matters for fidelity);
    ``torch.float32`` keeps full-precision frequencies like diffusers and ComfyUI native. May be changed on the
    instance at any time.

    ``block_callback``: None, or a callable run with the block index before every transformer block (a host
    checks for a user interrupt there: one forward of a large image takes many seconds, a block a fraction).
    May be set on the instance at any time; it never changes the result.
    """

    block_callback: Callable[[int], None] | None = None

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=None,
                 rope_frequency_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        ops = resolve_operations(operations)
        self.config = config
        self.rope_frequency_dtype = rope_frequency_dtype
        hidden = config.hidden_size
        self.input_proj = ops.Linear(config.in_channels, hidden, bias=True, dtype=dtype, device=device)
        self.llm_cond_norm = ops.RMSNorm(config.llm_features_dim, eps=config.llm_cond_norm_eps, dtype=dtype,
                                         device=device)
        self.llm_cond_proj = ops.Linear(config.llm_features_dim, hidden, bias=True, dtype=dtype, device=device)
        self.t_embedding = TimestepEmbedding(hidden, dtype=dtype, device=device, operations=operations)
        self.adaln_proj = ops.Linear(hidden, config.adaln_dim, bias=True, dtype=dtype, device=device)
        # Row 0: text and padding tokens, row 1: image tokens.
        self.embed_image_indicator = ops.Embedding(2, hidden, dtype=dtype, device=device)
        self.rope = MRoPE(config.attention_head_dim, config.rope_theta, config.mrope_section)
        self.layers = nn.ModuleList(
            TransformerBlock(config, dtype=dtype, device=device, operations=operations)
            for _ in range(config.num_layers))
        self.final_layer = FinalLayer(config, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_features: torch.Tensor | None, positions: torch.Tensor,
                indicators: torch.Tensor, attention_mask: torch.Tensor | None = None,
                transformer_options: dict | None = None) -> torch.Tensor:
        """Velocity for every row of a packed sequence; only image rows (indicator 2) are meaningful.

        Args:
            x: (B, L, in_channels) latent tokens in the compute dtype (text/padding rows are ignored).
            t: (B,) or (B, L) model time in [0, 1] (0 = noise, 1 = data); rounded to the compute dtype first.
            text_features: (B, Lt, llm_features_dim) for the first Lt <= L rows (the text region; Lt = L, the
                official full-length layout, also works), or None when there is no text (unconditional model).
                Rows whose indicator is not 3 are zeroed.
            positions: (B, L, 3) integer (t, h, w) MRoPE positions.
            indicators: (B, L) integer roles: 3 text, 2 image, 0 padding.
            attention_mask: (B, 1, L, L) bool, True = may attend (the official model's segment mask
                ``seg_i == seg_j``, built by :mod:`ideogram4.packing`), or None for full attention, which is exact
                whenever a sample has no padding.
            transformer_options: a host's per-call options, handed unchanged to :meth:`run_block` (the core
                reads nothing from it).

        Returns:
            (B, L, in_channels) float32.
        """
        batch, length, channels = x.shape
        if channels != self.config.in_channels:
            raise ValueError(f"Ideogram4DiT: x has {channels} channels, the model expects {self.config.in_channels}.")
        if not x.is_floating_point():
            raise TypeError(f"Ideogram4DiT: x must be a float tensor in the compute dtype, got {x.dtype}.")
        for name, value, shape in (("positions", positions, (batch, length, 3)),
                                   ("indicators", indicators, (batch, length))):
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"Ideogram4DiT: {name} must have shape {shape}, got {tuple(value.shape)}.")
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise TypeError(f"Ideogram4DiT: attention_mask must be bool (True = attend), got {attention_mask.dtype}.")
        dtype = x.dtype

        is_image = indicators == OUTPUT_IMAGE_INDICATOR
        image_mask = is_image.unsqueeze(-1).to(dtype)
        h = self.input_proj(x * image_mask) * image_mask

        if t.ndim == 0:
            t = t.expand(batch)
        conditioning = self.t_embedding(t, dtype)
        if t.ndim == 1:
            conditioning = conditioning.unsqueeze(1)  # (B, 1, hidden): broadcast over tokens, not L copies
        adaln_input = F.silu(self.adaln_proj(conditioning))

        if text_features is not None and text_features.shape[1] > 0:
            text_length = text_features.shape[1]
            if text_features.shape[0] != batch or text_length > length:
                raise ValueError(
                    f"Ideogram4DiT: text_features {tuple(text_features.shape)} must be (B={batch}, Lt<={length}, "
                    f"{self.config.llm_features_dim}).")
            text_mask = (indicators[:, :text_length] == LLM_TOKEN_INDICATOR).unsqueeze(-1).to(dtype)
            text_term = self.llm_cond_proj(self.llm_cond_norm(text_features.to(dtype) * text_mask)) * text_mask
            # h is exactly zero on text rows (masked above), so adding in place there equals the official
            # full-length h + text_term while skipping llm_cond_proj on the image rows, whose text term is zero.
            h[:, :text_length] += text_term

        h = h + self.embed_image_indicator(is_image.long()).to(dtype)

        frequency_dtype = dtype if self.rope_frequency_dtype is None else self.rope_frequency_dtype
        cos, sin = self.rope(positions, frequency_dtype)
        # Built once per call, shared by every block; (B, L, 1, head_dim) broadcasts over heads.
        cos = cos.to(dtype).unsqueeze(2)
        sin = sin.to(dtype).unsqueeze(2)

        for index, block in enumerate(self.layers):
            if self.block_callback is not None:
                self.block_callback(index)
            h = self.run_block(index, h, adaln_input, cos, sin, attention_mask, transformer_options)
        return self.final_layer(h, adaln_input).to(torch.float32)

    def run_block(self, index: int, h: torch.Tensor, adaln_input: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, attention_mask: torch.Tensor | None,
                  transformer_options: dict | None) -> torch.Tensor:
        """Block ``index`` on the residual stream ``h`` (B, L, hidden). The one place a host hooks into single
        blocks (replacing a block, checks between blocks); ``transformer_options`` is the dict given to
        :meth:`forward`."""
        return self.layers[index](h, adaln_input, cos, sin, attention_mask)
