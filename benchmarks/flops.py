"""FLOP model of one Ideogram 4 sampling step, for "effective TFLOP/s" in the benchmark tables.

Counted: the matrix products a forward cannot avoid, 2 FLOP per multiply-add.
  * every Linear layer over the rows it acts on:
      - per token (all L = n_text + N rows): ``input_proj``, each block's ``attention.qkv``, ``attention.o``,
        ``feed_forward.w1/w2/w3``, and ``final_layer.linear``;
      - per text token only (n_text rows; 0 in the unconditional pass): ``llm_cond_proj``
        (its output is multiplied by the text mask, so other rows are never needed);
      - once per sample (the timestep conditioning is broadcast over tokens): ``t_embedding.mlp_in/mlp_out``,
        ``adaln_proj``, each block's ``adaln_modulation``, ``final_layer.adaln_modulation``;
  * attention per block: ``Q K^T`` and ``softmax(.) V``, each ``2 * L^2 * hidden`` (all heads together).
Not counted: norms, RoPE, softmax, activations, masking (memory-bound work), and any work an implementation adds
(e.g. diffusers' 2048-token text padding). So every implementation is credited with the same FLOPs for a step and
"effective TFLOP/s" compares wall time on a common scale.

One step = a conditional forward on ``n_text + N`` tokens plus an unconditional forward on ``N`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ideogram4.constants import PIXELS_PER_TOKEN
from ideogram4.dit_config import DiTConfig


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward, split by kind (all for the whole batch)."""

    token_linears: int  # input_proj, blocks' qkv/o/w1/w2/w3, final_layer.linear over all L tokens
    text_linears: int  # llm_cond_proj over the text tokens
    conditioning_linears: int  # t_embedding, adaln_proj, adaln_modulation (per sample)
    attention: int  # QK^T and AV in every block

    @property
    def total(self) -> int:
        return self.token_linears + self.text_linears + self.conditioning_linears + self.attention


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def forward_flops(config: DiTConfig, image_tokens: int, text_tokens: int, batch: int = 1) -> ForwardFlops:
    """FLOPs of one DiT forward on ``text_tokens + image_tokens`` tokens per sample (see the module docstring)."""
    if image_tokens < 0 or text_tokens < 0 or batch < 1:
        raise ValueError(
            f"forward_flops: need image_tokens >= 0, text_tokens >= 0, batch >= 1; got {image_tokens}, "
            f"{text_tokens}, {batch}.")
    hidden = config.hidden_size
    length = image_tokens + text_tokens
    rows = batch * length

    per_block_token = (_linear(rows, hidden, 3 * hidden) + _linear(rows, hidden, hidden)
                       + 2 * _linear(rows, hidden, config.intermediate_size)
                       + _linear(rows, config.intermediate_size, hidden))
    token_linears = (_linear(rows, config.in_channels, hidden) + config.num_layers * per_block_token
                     + _linear(rows, hidden, config.in_channels))

    text_linears = _linear(batch * text_tokens, config.llm_features_dim, hidden)

    conditioning_linears = (2 * _linear(batch, hidden, hidden) + _linear(batch, hidden, config.adaln_dim)
                            + config.num_layers * _linear(batch, config.adaln_dim, 4 * hidden)
                            + _linear(batch, config.adaln_dim, hidden))

    attention = config.num_layers * 2 * (2 * batch * length * length * hidden)
    return ForwardFlops(token_linears, text_linears, conditioning_linears, attention)


def step_flops(config: DiTConfig, image_tokens: int, text_tokens: int, batch: int = 1) -> int:
    """FLOPs of one sampling step: conditional forward (text + image) plus unconditional forward (image only)."""
    conditional = forward_flops(config, image_tokens, text_tokens, batch)
    unconditional = forward_flops(config, image_tokens, 0, batch)
    return conditional.total + unconditional.total


def image_tokens_for(width: int, height: int) -> int:
    """Number of latent tokens of a ``width x height`` image (one token per 16 x 16 pixels)."""
    if width % PIXELS_PER_TOKEN or height % PIXELS_PER_TOKEN:
        raise ValueError(f"image size {width}x{height} must be a multiple of {PIXELS_PER_TOKEN} on both sides.")
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)
