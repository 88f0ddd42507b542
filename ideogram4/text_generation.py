"""Text generation with the pack's own Qwen3-VL decoder: the final norm and LM head, a KV cache, a token loop.

The decoder layers are the text encoder's (:class:`ideogram4.text_encoder.Qwen3VLTextEncoder`), run on the same
weights, so generation adds only :class:`Qwen3VLLanguageModelHead` (final RMSNorm + LM head, 4096 x 151936 for
the 8B model) to memory, plus the cache. Numerics follow transformers' Qwen3-VL ``generate``: the decoder as in
the encoder, the final norm with transformers' RMSNorm formula, logits in float32; a prompt's tokens are encoded
in one causal pass, then one token per step attends over the cached keys and values of every earlier position
(RoPE position = index in the sequence; for text Qwen3-VL's MRoPE is plain 1-D RoPE).

:func:`generate` is the loop; what to emit at each step is the caller's ``choose`` (greedy or sampled in
:class:`SampledTokens`, constrained to the caption schema in :mod:`ideogram4.constrained_decoding`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .ops import resolve_operations
from .text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder, attention_mask_4d, qwen_rms_norm, rope_cos_sin


class Qwen3VLLanguageModelHead(nn.Module):
    """Final RMSNorm and LM head of the Qwen3-VL language model. Keys ``norm.weight``, ``lm_head.weight``."""

    def __init__(self, config: Qwen3VLTextConfig, dtype=None, device=None, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.norm = ops.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, device=device)
        self.lm_head = ops.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype, device=device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, hidden) in the compute dtype -> logits (B, L, vocab) float32."""
        return self.lm_head(qwen_rms_norm(self.norm, hidden)).float()


class _LayerCache:
    """One layer's keys and values, preallocated for the whole generation (no re-allocation per token)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values, self.length = keys, values, 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Keys and values of every decoder layer for up to ``max_length`` positions of one sequence."""

    def __init__(self, config: Qwen3VLTextConfig, num_layers: int, max_length: int, dtype, device):
        shape = (1, config.num_key_value_heads, max_length, config.head_dim)
        self.layers = [_LayerCache(torch.empty(shape, dtype=dtype, device=device),
                                   torch.empty(shape, dtype=dtype, device=device)) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length


def check_generation_layers(encoder: Qwen3VLTextEncoder) -> None:
    """Generation runs every decoder layer of the model; the encoder builds up to its last tap (35), which is
    all of Qwen3-VL-8B's 36. A config with more layers cannot generate from this encoder."""
    if len(encoder.layers) != encoder.config.num_hidden_layers:
        raise ValueError(
            f"text generation needs all {encoder.config.num_hidden_layers} decoder layers of the language model, "
            f"but the encoder builds {len(encoder.layers)} (up to its last tapped layer). Use Qwen3-VL-8B "
            "(36 layers)."
        )


def next_token_logits(encoder: Qwen3VLTextEncoder, head: Qwen3VLLanguageModelHead, input_ids: torch.Tensor,
                      kv_cache: KVCache | None = None) -> torch.Tensor:
    """Logits (vocab,) float32 after the tokens ``input_ids`` (1, L).

    With a cache: ``input_ids`` continue the cached sequence (the whole prompt on the first call, then the new
    tokens) and their keys and values are added to it. Without: ``input_ids`` is the whole sequence.
    """
    start = 0 if kv_cache is None else kv_cache.length
    length = input_ids.shape[1]
    device = input_ids.device
    hidden = encoder.embed_tokens(input_ids)
    if encoder.compute_dtype is not None:
        hidden = hidden.to(encoder.compute_dtype)
    positions = torch.arange(start, start + length, device=device)[None]
    cos, sin = rope_cos_sin(positions, encoder.config.head_dim, encoder.config.rope_theta, hidden.dtype)
    if start == 0:
        mask = attention_mask_4d(None, length, device)
    elif length == 1:
        mask = None  # one new token sees every cached position
    else:  # several new tokens: each sees the cache and the new ones up to itself
        mask = torch.ones(length, start + length, dtype=torch.bool, device=device).tril(diagonal=start)[None, None]
    for index, layer in enumerate(encoder.layers):
        hidden = layer(hidden, cos, sin, mask, None if kv_cache is None else kv_cache.layers[index])
    return head(hidden[:, -1:])[0, 0]


# choose(logits (vocab,) float32) -> (tokens to append, finished).
ChooseTokens = Callable[[torch.Tensor], "tuple[list[int], bool]"]


def generate(encoder: Qwen3VLTextEncoder, head: Qwen3VLLanguageModelHead, prompt_ids: list[int],
             max_new_tokens: int, choose: ChooseTokens, use_cache: bool = True,
             on_tokens: Callable[[int], None] | None = None, device=None) -> list[int]:
    """Generate after ``prompt_ids``: at most ``max_new_tokens`` new token ids (without the prompt).

    ``choose`` picks from each step's logits; ``on_tokens(count)`` is called after every step with the number of
    tokens so far (progress; raising from it, e.g. on a user's Cancel, stops the generation). ``use_cache=False``
    re-runs the whole sequence every step (same tokens, much slower; kept as the cache's reference). ``device``:
    where to compute (default: the embedding's device; a host that streams weights passes its compute device).
    """
    check_generation_layers(encoder)
    if device is None:
        device = encoder.embed_tokens.weight.device
    dtype = encoder.compute_dtype or encoder.embed_tokens.weight.dtype
    cache = KVCache(encoder.config, len(encoder.layers), len(prompt_ids) + max_new_tokens, dtype, device) \
        if use_cache else None
    sequence = list(prompt_ids)
    new_tokens: list[int] = []
    step_input = sequence
    # inference_mode, not no_grad: the same numbers with less bookkeeping per op, which is most of a step's cost
    # for a small model (36 layers of a dozen small ops each).
    with torch.inference_mode():
        while len(new_tokens) < max_new_tokens:
            # (choose may append several tokens at once, e.g. text the caption schema forces.)
            logits = next_token_logits(encoder, head, torch.tensor([step_input], device=device), cache)
            tokens, finished = choose(logits)
            new_tokens += tokens
            if on_tokens is not None:
                on_tokens(len(new_tokens))
            if finished:
                break
            sequence += tokens
            step_input = tokens if use_cache else sequence
    return new_tokens


class SampledTokens:
    """Plain (unconstrained) choice: greedy at temperature 0, else sampled from softmax(logits / temperature)
    with a CPU generator seeded with ``seed`` (the same tokens on every device). Finishes on a stop token."""

    def __init__(self, temperature: float = 0.0, seed: int = 0, stop_token_ids=()):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        self.temperature = temperature
        self.stop_token_ids = frozenset(stop_token_ids)
        self.generator = torch.Generator().manual_seed(seed)

    def pick(self, logits: torch.Tensor) -> int:
        return sample_token(logits, self.temperature, self.generator)

    def __call__(self, logits: torch.Tensor) -> tuple[list[int], bool]:
        token = self.pick(logits)
        return [token], token in self.stop_token_ids


def sample_token(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """Argmax at temperature 0 (the first maximum, as torch and transformers), else one draw from
    softmax(logits / temperature) on the CPU with ``generator``, by inverting the cumulative distribution at one
    uniform number (a 151936-way ``torch.multinomial`` costs far more per token)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    cumulative = probabilities.cumsum(dim=-1)
    draw = torch.rand(1, generator=generator, dtype=torch.float64).float() * cumulative[-1]
    token = int(torch.searchsorted(cumulative, draw, right=True))
    # Round-off can leave the draw at the very top, or land on a zero-probability (masked) token: step back to the
    # last token with probability left.
    while token >= len(probabilities) or probabilities[token] == 0:
        token -= 1
    return token
