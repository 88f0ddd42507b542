"""The Ideogram 4 text encoder: the language model of Qwen3-VL-8B-Instruct, tapped at 13 decoder layers.

Only the decoder stack up to the last tapped layer is built and run (no vision tower, no final norm, no LM
head; text generation, :mod:`ideogram4.text_generation`, keeps those in a module of its own and passes a KV
cache through the same layers). For text tokens Qwen3-VL's interleaved MRoPE sees the same position on its
t/h/w axes, so it is plain 1-D RoPE over the head dimension.

Shapes: B prompts, L tokens (left-padded to the longest prompt), H hidden size, T = 13 taps.
Output features are (B, L, H*T) float32 with feature index ``h*T + tap`` (the taps interleaved per hidden unit,
the official layout that ``llm_cond_norm``/``llm_cond_proj`` of the DiT are indexed in) and padding rows zero.

Numerics follow transformers' Qwen3-VL (the official pipeline calls its decoder layers directly): every layer
computes in the compute dtype; RMSNorm uses transformers' two-rounding formula (:func:`qwen_rms_norm`); RoPE
angles and cos/sin are computed in float32 with autocast off (``inv_freq`` computed on the CPU in float32, as
transformers does at construction) and cast to the compute dtype before the rotation; attention is
``F.scaled_dot_product_attention`` with a boolean causal (+ key padding) mask, always passed as the official
pipeline always passes one, and the KV heads repeated to the query heads.

Official sequence mode (``image_slots > 0``): the official pipeline runs Qwen3-VL over its whole packed sequence,
``[left pad][text][one slot per image token]``, with only the real text attended to. The slots are masked (and
follow the text, so causality hides them too), so the text features are mathematically those of the text alone,
but in bf16 the attention kernels reduce over a longer, masked row of keys and can round the last bits
differently (seen on GPU; the CPU kernel here happens to give the same bits). Passing the image's token count as ``image_slots`` rebuilds that
sequence (:func:`official_sequence`) and reproduces the official features bit for bit; 0 encodes the text
alone (faster, same maths).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .constants import PIXELS_PER_TOKEN, QWEN3_VL_ACTIVATION_LAYERS
from .ops import resolve_operations
from .rope import apply_rotary, rope_inverse_frequencies
from .tokens import tokenize_prompts

# Qwen3-VL-8B's rope_theta; transformers' Qwen3VLTextConfig defaults to another value, so it is explicit here.
QWEN3_VL_ROPE_THETA = 5_000_000.0


@dataclass(frozen=True)
class Qwen3VLTextConfig:
    """Dimensions of the Qwen3-VL language model. Defaults are Qwen3-VL-8B-Instruct's."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = QWEN3_VL_ROPE_THETA
    attention_bias: bool = False

    @property
    def num_taps(self) -> int:
        return len(QWEN3_VL_ACTIVATION_LAYERS)

    @property
    def features_dim(self) -> int:
        """Width of the per-token feature the DiT consumes (53248 for the 8B model)."""
        return self.hidden_size * self.num_taps

    @classmethod
    def from_hf_config(cls, config: dict) -> "Qwen3VLTextConfig":
        """From a Hugging Face Qwen3-VL ``config.json`` (its ``text_config``) or a bare text config dict.

        Reads ``rope_theta`` from the top level, ``rope_parameters`` (transformers 5) or ``rope_scaling``;
        missing fields keep the 8B defaults. Unknown keys are ignored.
        """
        text = config.get("text_config", config)
        defaults = cls()
        rope_theta = text.get("rope_theta")
        for rope_block in ("rope_parameters", "rope_scaling"):
            if rope_theta is None and isinstance(text.get(rope_block), dict):
                rope_theta = text[rope_block].get("rope_theta")
        num_attention_heads = int(text.get("num_attention_heads", defaults.num_attention_heads))
        hidden_size = int(text.get("hidden_size", defaults.hidden_size))
        return cls(
            vocab_size=int(text.get("vocab_size", defaults.vocab_size)),
            hidden_size=hidden_size,
            intermediate_size=int(text.get("intermediate_size", defaults.intermediate_size)),
            num_hidden_layers=int(text.get("num_hidden_layers", defaults.num_hidden_layers)),
            num_attention_heads=num_attention_heads,
            num_key_value_heads=int(text.get("num_key_value_heads") or num_attention_heads),
            head_dim=int(text.get("head_dim") or hidden_size // num_attention_heads),
            rms_norm_eps=float(text.get("rms_norm_eps", defaults.rms_norm_eps)),
            rope_theta=float(rope_theta if rope_theta is not None else defaults.rope_theta),
            attention_bias=bool(text.get("attention_bias", defaults.attention_bias)),
        )


def num_layers_to_build() -> int:
    """Decoder layers the encoder needs: up to and including the last tap (layer 35 -> 36 layers)."""
    return max(QWEN3_VL_ACTIVATION_LAYERS) + 1


# ----------------------------------------------------------------------------------------------------------------
# RoPE and masks
# ----------------------------------------------------------------------------------------------------------------


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for 1-D RoPE: positions (B, L) int -> two (B, 1, L, head_dim) tensors in ``dtype``.

    Angles and cos/sin in float32 with autocast off, then cast to ``dtype`` (as transformers does).
    """
    inv_freq = rope_inverse_frequencies(int(head_dim), float(theta)).to(positions.device)
    with torch.autocast(device_type=positions.device.type, enabled=False):
        angles = positions[..., None].float() * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def positions_from_mask(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """(B, L) int64 positions: 0..n-1 over the real tokens of each row, counted from its first real token;
    padding gets 0 (as in the official packing)."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    mask = attention_mask.to(device=device, dtype=torch.long)
    return (mask.cumsum(dim=-1) - 1).clamp(min=0) * mask


# Token id the official packing writes into left padding and image slots (its id buffer starts as zeros).
OFFICIAL_FILLER_TOKEN_ID = 0


def image_slot_count(width: int, height: int) -> int:
    """Image tokens of a width x height image, (height // 16) * (width // 16): the slots the official pipeline
    appends after the text when it encodes a prompt. Both sides must be non-negative multiples of 16."""
    for name, value in (("width", width), ("height", height)):
        if value < 0 or value % PIXELS_PER_TOKEN != 0:
            raise ValueError(
                f"image_slot_count: {name}={value} is not a non-negative multiple of {PIXELS_PER_TOKEN}; "
                f"Ideogram 4 images are made of {PIXELS_PER_TOKEN}x{PIXELS_PER_TOKEN} pixel tokens. Use the "
                f"image size you sample at (a multiple of {PIXELS_PER_TOKEN})."
            )
    return (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN)


def official_sequence(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_slots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sequence the official pipeline feeds Qwen3-VL for these (left-padded) prompts.

    input_ids (B, L) int64 and attention_mask (B, L) (True/1 on real tokens; None = all real) ->
    ids, mask, positions, each (B, L + image_slots): layout ``[pad][text][image_slots slots]``; padding and
    slots carry token id 0 and position 0; text positions count 0..n-1 from each row's first real token; the
    mask (bool) is True on the real text only, so pads and slots are never attended to.
    """
    if image_slots < 0:
        raise ValueError(f"official_sequence: image_slots must be >= 0, got {image_slots}")
    batch, length = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        text_mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    else:
        text_mask = attention_mask.to(device=device, dtype=torch.bool)
    slots_mask = torch.zeros(batch, image_slots, dtype=torch.bool, device=device)
    mask = torch.cat((text_mask, slots_mask), dim=1)
    text_ids = torch.where(text_mask, input_ids, torch.full_like(input_ids, OFFICIAL_FILLER_TOKEN_ID))
    ids = torch.cat((text_ids, torch.full((batch, image_slots), OFFICIAL_FILLER_TOKEN_ID, dtype=input_ids.dtype,
                                          device=device)), dim=1)
    # Counted over the extended mask, so pads and slots (mask 0) get position 0, as the official packing.
    positions = positions_from_mask(mask, batch, length + image_slots, device)
    return ids, mask, positions


def attention_mask_4d(attention_mask: torch.Tensor | None, length: int, device) -> torch.Tensor:
    """Boolean (B or 1, 1, L, L) mask, True = may attend: causal and, with padding, key is a real token.

    Padding queries see no real key; letting each see itself keeps its (discarded) row finite, so no NaN can
    enter later layers through values that masked-out positions multiply by zero.
    """
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if attention_mask is None:
        return causal[None, None]
    real_keys = attention_mask.to(device=device, dtype=torch.bool)[:, None, :]
    allowed = (causal[None] & real_keys) | torch.eye(length, dtype=torch.bool, device=device)[None]
    return allowed[:, None]


def qwen_rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen3-VL RMSNorm with the weight of ``norm`` (an ``ops.RMSNorm``) over x's last dim.

    Normalises in float32, rounds to x's dtype, *then* multiplies by the weight in x's dtype. torch's
    ``F.rms_norm`` (what ``nn.RMSNorm`` and ComfyUI's RMSNorm call) multiplies by the weight before its single
    rounding, which differs by up to an ulp in bf16 and drifts over 36 layers; the official pipeline runs
    transformers' formula. Documented exception to "call the module": the weight is read from ``norm.weight``
    and cast to x's device and dtype here.
    """
    weight = norm.weight.to(device=x.device, dtype=x.dtype)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    x32 = x.float()
    normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalized.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Modules (key names = transformers' Qwen3-VL language model without its prefix)
# ----------------------------------------------------------------------------------------------------------------


class Qwen3VLAttention(nn.Module):
    """Grouped-query self-attention with per-head RMSNorm on q and k (Qwen3)."""

    def __init__(self, config: Qwen3VLTextConfig, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = config.attention_bias
        self.q_proj = ops.Linear(config.hidden_size, q_width, bias=bias, dtype=dtype, device=device)
        self.k_proj = ops.Linear(config.hidden_size, kv_width, bias=bias, dtype=dtype, device=device)
        self.v_proj = ops.Linear(config.hidden_size, kv_width, bias=bias, dtype=dtype, device=device)
        self.o_proj = ops.Linear(q_width, config.hidden_size, bias=bias, dtype=dtype, device=device)
        self.q_norm = ops.RMSNorm(self.head_dim, eps=config.rms_norm_eps, dtype=dtype, device=device)
        self.k_norm = ops.RMSNorm(self.head_dim, eps=config.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                kv_cache=None) -> torch.Tensor:
        """x (B, L, hidden), cos/sin (B, 1, L, head_dim), mask (B|1, 1, L, L_keys) bool or None (every key
        visible) -> (B, L, hidden).

        kv_cache (text generation only): an object whose ``update(k, v)`` stores this call's roped keys and
        values (B, kv_heads, L, head_dim) after the earlier ones and returns all of them; the queries then attend
        over every cached position. None (the feature path) attends over this call's tokens alone.
        """
        batch, length, _ = x.shape
        q = qwen_rms_norm(self.q_norm, self.q_proj(x).view(batch, length, self.num_heads, self.head_dim))
        k = qwen_rms_norm(self.k_norm, self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim))
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        keys = k.shape[2]
        # Repeat KV heads explicitly: SDPA's enable_gqa with a mask falls back to the math kernel on CUDA, and
        # this is what transformers does whenever a mask is passed.
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, self.num_heads, keys, self.head_dim)
            v = v[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, self.num_heads, keys, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class Qwen3VLMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen3VLTextConfig, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = ops.Linear(hidden, inner, bias=False, dtype=dtype, device=device)
        self.up_proj = ops.Linear(hidden, inner, bias=False, dtype=dtype, device=device)
        self.down_proj = ops.Linear(inner, hidden, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3VLDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: Qwen3VLTextConfig, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.self_attn = Qwen3VLAttention(config, dtype=dtype, device=device, operations=operations)
        self.mlp = Qwen3VLMLP(config, dtype=dtype, device=device, operations=operations)
        eps = config.rms_norm_eps
        self.input_layernorm = ops.RMSNorm(config.hidden_size, eps=eps, dtype=dtype, device=device)
        self.post_attention_layernorm = ops.RMSNorm(config.hidden_size, eps=eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                kv_cache=None) -> torch.Tensor:
        x = x + self.self_attn(qwen_rms_norm(self.input_layernorm, x), cos, sin, mask, kv_cache)
        return x + self.mlp(qwen_rms_norm(self.post_attention_layernorm, x))


class Qwen3VLTextEncoder(nn.Module):
    """Qwen3-VL language model up to decoder layer 35, returning the 13 tapped layer outputs interleaved.

    State-dict keys: ``embed_tokens.weight``, ``layers.N.self_attn.{q,k,v,o}_proj.weight``,
    ``layers.N.self_attn.{q,k}_norm.weight``, ``layers.N.mlp.{gate,up,down}_proj.weight``,
    ``layers.N.{input_layernorm,post_attention_layernorm}.weight`` for N < 36.

    ``compute_dtype`` (default: ``dtype``; if both are None, the embedding output's dtype) is the dtype the
    layers compute in; a host that stores weights in another dtype (ComfyUI's manual-cast ops) sets it.
    """

    def __init__(
        self, config: Qwen3VLTextConfig, dtype=None, device=None, operations=None, compute_dtype=None
    ):
        super().__init__()
        ops = resolve_operations(operations)
        self.config = config
        self.compute_dtype = compute_dtype if compute_dtype is not None else dtype
        self.embed_tokens = ops.Embedding(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            Qwen3VLDecoderLayer(config, dtype=dtype, device=device, operations=operations)
            for _ in range(num_layers_to_build())
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, image_slots: int = 0
    ) -> torch.Tensor:
        """input_ids (B, L) int64; attention_mask (B, L), True/1 on real tokens (left padding), or None when
        every row is fully real. Returns (B, L, hidden*13) float32, padding rows zero.

        ``image_slots`` > 0 runs the official packed sequence instead (:func:`official_sequence`: the text
        followed by that many masked image slots) and returns the features of the L text rows only; the
        result is what the official pipeline computes, bit for bit in bf16. 0 runs the text alone.
        """
        batch, length = input_ids.shape
        device = input_ids.device
        if image_slots > 0:
            input_ids, attention_mask, positions = official_sequence(input_ids, attention_mask, image_slots)
        else:
            positions = positions_from_mask(attention_mask, batch, length, device)
        hidden = self.embed_tokens(input_ids)
        if self.compute_dtype is not None:
            hidden = hidden.to(self.compute_dtype)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        mask = attention_mask_4d(attention_mask, input_ids.shape[1], device)

        # Filled tap by tap as the layers run (text rows only), so no list of 13 hidden states is kept alive.
        features = torch.empty(batch, length, self.config.hidden_size, len(QWEN3_VL_ACTIVATION_LAYERS),
                               dtype=torch.float32, device=device)
        tap_slot = {layer: slot for slot, layer in enumerate(QWEN3_VL_ACTIVATION_LAYERS)}
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, mask)
            if index in tap_slot:
                features[..., tap_slot[index]] = hidden[:, :length]
        features = features.view(batch, length, -1)
        if attention_mask is not None:
            text_mask = attention_mask[:, :length].to(device=device, dtype=features.dtype)
            features.mul_(text_mask[..., None])
        return features


def encode_prompts(
    encoder: Qwen3VLTextEncoder, tokenizer, prompts: list[str], device=None, image_slots: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """Prompts -> ((B, L, hidden*13) float32 features, real token count per prompt).

    Each prompt goes through the official chat template (:mod:`ideogram4.tokens`); several prompts are
    left-padded to the longest with the padding rows zeroed. ``device`` defaults to the embedding's device.
    ``image_slots`` (:func:`image_slot_count` of the sampled size) encodes as the official pipeline does, the
    text followed by the image's masked token slots, for bit-identical bf16 features; 0 (default) encodes the
    text alone (faster, the same maths).
    """
    if isinstance(prompts, str):
        raise TypeError("encode_prompts takes a list of prompts; wrap a single prompt in a list")
    batch = tokenize_prompts(tokenizer, list(prompts))
    if device is None:
        device = next(encoder.parameters()).device
    # No mask when nothing is padded: the same maths, and no mask to build per layer.
    attention_mask = None if len(set(batch.lengths)) == 1 else batch.attention_mask.to(device)
    with torch.no_grad():
        features = encoder(batch.input_ids.to(device), attention_mask, image_slots=image_slots)
    return features, batch.lengths
