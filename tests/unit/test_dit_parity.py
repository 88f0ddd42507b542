"""Ideogram4DiT against the diffusers 0.42.1 oracle, hand-computed values and its own padded/unpadded paths.

The oracle is diffusers' ``Ideogram4Transformer2DModel`` with the same random weights (split q/k/v layout
converted from the official fused ``qkv``), fed the exact packed sequence built by ``ideogram4.packing``. Where
diffusers deviates from the official code this is set up so the parts that agree are compared:
  * its pipeline pads text to 2048 tokens; the transformer itself accepts any layout, so it gets ours (official
    longest-prompt left padding) and the 2048 padding never comes into play;
  * it keeps RoPE inverse frequencies in float32, the official model rounds them to the compute dtype: everything
    runs in float32, where that rounding is a no-op;
  * it always builds the segment mask (all-True for one prompt), we pass none when every token sees every token;
  * it takes full-length text features (zeros over the image rows), we take the text region only;
  * it uses a hand-written RMSNorm, we F.rms_norm: equal to float32 rounding.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_dit import (
    TINY_CONFIG,
    build_diffusers_oracle,
    build_tiny_dit,
    max_abs_diff,
    random_official_state_dict,
    tiny_dit_config,
)

from ideogram4.constants import SEQUENCE_PADDING_INDICATOR
from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_config import DiTConfig
from ideogram4.packing import pack_conditional, pack_unconditional

FEATURES = TINY_CONFIG.llm_features_dim
CHANNELS = TINY_CONFIG.in_channels


@pytest.fixture(scope="module")
def weights():
    return random_official_state_dict(TINY_CONFIG, seed=1)


@pytest.fixture(scope="module")
def model(weights):
    dit = Ideogram4DiT(TINY_CONFIG)
    dit.load_state_dict(weights, strict=True)
    return dit.eval()


@pytest.fixture(scope="module")
def oracle(weights):
    return build_diffusers_oracle(TINY_CONFIG, weights)


def run(dit, packed, t, dtype=torch.float32):
    features = None if packed.text_features is None else packed.text_features.to(dtype)
    with torch.no_grad():
        return dit(packed.x.to(dtype), t, features, packed.positions, packed.indicators,
                   packed.attention_mask)


def official_segment_ids(packed):
    """The official model's segment ids, which diffusers takes: padding rows (indicator 0) -1, the rest 1."""
    return torch.where(packed.indicators == 0, SEQUENCE_PADDING_INDICATOR, 1)


def run_oracle(oracle, packed, t):
    """diffusers with the official full-length feature layout and its always-built segment mask."""
    batch, length, _ = packed.x.shape
    features = torch.zeros(batch, length, FEATURES)
    if packed.text_features is not None:
        features[:, : packed.text_features.shape[1]] = packed.text_features
    with torch.no_grad():
        return oracle(hidden_states=packed.x, timestep=t, encoder_hidden_states=features,
                      position_ids=packed.positions, segment_ids=official_segment_ids(packed),
                      indicator=packed.indicators).sample


def test_state_dict_uses_the_official_key_names():
    block = ["attention.qkv.weight", "attention.norm_q.weight", "attention.norm_k.weight", "attention.o.weight",
             "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
             "attention_norm1.weight", "attention_norm2.weight", "ffn_norm1.weight", "ffn_norm2.weight",
             "adaln_modulation.weight", "adaln_modulation.bias"]
    expected = {"input_proj.weight", "input_proj.bias", "llm_cond_norm.weight", "llm_cond_proj.weight",
                "llm_cond_proj.bias", "t_embedding.mlp_in.weight", "t_embedding.mlp_in.bias",
                "t_embedding.mlp_out.weight", "t_embedding.mlp_out.bias", "adaln_proj.weight", "adaln_proj.bias",
                "embed_image_indicator.weight", "final_layer.linear.weight", "final_layer.linear.bias",
                "final_layer.adaln_modulation.weight", "final_layer.adaln_modulation.bias"}
    expected |= {f"layers.{i}.{name}" for i in range(2) for name in block}
    state = Ideogram4DiT(TINY_CONFIG).state_dict()
    assert set(state) == expected
    hidden = TINY_CONFIG.hidden_size
    assert state["layers.0.attention.qkv.weight"].shape == (3 * hidden, hidden)
    assert state["layers.1.adaln_modulation.weight"].shape == (4 * hidden, TINY_CONFIG.adaln_dim)
    assert state["embed_image_indicator.weight"].shape == (2, hidden)


def test_config_from_official_json_reads_both_key_styles():
    diffusers_style = {"_class_name": "Ideogram4Transformer2DModel", "num_layers": 34, "num_attention_heads": 18,
                       "attention_head_dim": 256, "intermediate_size": 12288, "adaln_dim": 512,
                       "in_channels": 128, "llm_features_dim": 53248, "rope_theta": 5000000,
                       "mrope_section": [24, 20, 20], "norm_eps": 1e-05}
    config = DiTConfig.from_official_json(diffusers_style)
    assert config == DiTConfig() and config.hidden_size == 4608 and config.mrope_section == (24, 20, 20)
    official_style = {"emb_dim": 256, "num_layers": 3, "num_heads": 2, "adanln_dim": 64, "unknown": 1}
    config = DiTConfig.from_official_json(official_style)
    assert (config.attention_head_dim, config.num_attention_heads, config.adaln_dim) == (128, 2, 64)


def test_config_rejects_a_rope_section_that_does_not_fit_the_head():
    with pytest.raises(ValueError, match="mrope_section"):
        DiTConfig(attention_head_dim=64)  # released (24, 20, 20) needs 60 frequency pairs, a 64-dim head has 32


def test_single_prompt_matches_diffusers(model, oracle):
    packed = pack_conditional(torch.randn(1, 12, CHANNELS), torch.randn(1, 5, FEATURES), None, 3, 4)
    assert packed.attention_mask is None
    t = torch.tensor([0.6])
    ours, reference = run(model, packed, t), run_oracle(oracle, packed, t)
    assert ours.dtype == torch.float32
    assert max_abs_diff(ours, reference) <= 1e-5
    assert reference.abs().max() > 0.5  # the comparison is not between near-zero outputs


def test_image_only_batch_matches_diffusers(model, oracle):
    packed = pack_unconditional(torch.randn(2, 20, CHANNELS), 4, 5)
    t = torch.tensor([0.1, 0.95])
    assert max_abs_diff(run(model, packed, t), run_oracle(oracle, packed, t)) <= 1e-5


def test_two_prompts_of_different_lengths_match_diffusers(model, oracle):
    """Left padding and the segment mask; also per-sample timesteps. Every row is compared, padding included."""
    packed = pack_conditional(torch.randn(2, 12, CHANNELS), torch.randn(2, 7, FEATURES), [3, 7], 3, 4)
    assert packed.attention_mask is not None
    t = torch.tensor([0.3, 0.8])
    assert max_abs_diff(run(model, packed, t), run_oracle(oracle, packed, t)) <= 1e-5


def test_unpadded_unmasked_path_equals_padded_masked_path(model):
    """A prompt alone (no padding, attention_mask None) gives the image velocity it gets when left-padded next
    to a longer prompt under the segment mask."""
    latent = torch.randn(2, 12, CHANNELS)
    features = torch.randn(2, 9, FEATURES)  # left-padded; sample 0's padding rows hold random values
    t = torch.tensor([0.45, 0.45])
    batched = pack_conditional(latent, features, [4, 9], 3, 4)
    padded = run(model, batched, t)[:, batched.image_slice]
    for b, n in enumerate((4, 9)):
        alone = pack_conditional(latent[b:b + 1], features[b:b + 1, 9 - n:], None, 3, 4)
        assert alone.attention_mask is None
        unpadded = run(model, alone, t[b:b + 1])[:, alone.image_slice]
        assert max_abs_diff(unpadded, padded[b:b + 1]) <= 1e-5


def test_full_length_text_features_equal_the_text_region(model):
    """The official layout passes features for every row (zeros on image rows); the text region alone is the same."""
    packed = pack_conditional(torch.randn(1, 6, CHANNELS), torch.randn(1, 4, FEATURES), None, 2, 3)
    full = torch.zeros(1, 10, FEATURES)
    full[:, :4] = packed.text_features
    t = torch.tensor([0.7])
    with torch.no_grad():
        official = model(packed.x, t, full, packed.positions, packed.indicators)
    assert max_abs_diff(run(model, packed, t), official) <= 1e-6


def _first_timestep_embedding(dit, t, dtype):
    """The sinusoid that reaches t_embedding.mlp_in, (B, hidden)."""
    seen = []
    handle = dit.t_embedding.mlp_in.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        packed = pack_unconditional(torch.randn(1, 4, CHANNELS), 2, 2)
        run(dit, packed, torch.tensor([t]), dtype)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("t, sin0, cos0", [
    # bf16(0.000123395) = 129 * 2**-20 = 0.000123024; sin/cos(1e4 * that) = 0.942569 / 0.334012 -> bf16.
    (0.000123395, 0.94140625, 0.333984375),
    # bf16(0.898926) = 0.8984375; sin/cos(8984.375) = -0.548015 / 0.836469 -> bf16.
    (0.898926, -0.546875, 0.8359375),
])
def test_timestep_is_rounded_to_the_compute_dtype_before_the_sinusoid(t, sin0, cos0):
    """Pair 0 of the sinusoid has frequency 1, so it shows the scalar 1e4 * t that was embedded (sin first)."""
    dit = build_tiny_dit(dtype=torch.bfloat16)
    embedding = _first_timestep_embedding(dit, t, torch.bfloat16)
    half = TINY_CONFIG.hidden_size // 2
    assert embedding.dtype == torch.bfloat16
    assert embedding[0, 0].item() == sin0 and embedding[0, half].item() == cos0
    # The last frequency is exactly 1e-4 (half - 1 in the denominator): its angle is the rounded t itself.
    assert embedding[0, half - 1].item() == pytest.approx(math.sin(float(torch.tensor(t).bfloat16())), abs=4e-3)


def test_float32_compute_embeds_the_unrounded_timestep():
    embedding = _first_timestep_embedding(build_tiny_dit(), 0.000123395, torch.float32)
    assert embedding[0, 0].item() == pytest.approx(math.sin(1.23395), abs=2e-6)


def _bf16_comparison_inputs():
    # t values exact in bf16, so the timestep rounding is the same for both runs.
    packed = pack_conditional(torch.randn(2, 64, CHANNELS), torch.randn(2, 9, FEATURES), [9, 5], 8, 8)
    return packed, torch.tensor([0.375, 0.8125])


def _relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def test_bfloat16_run_agrees_with_float32_run():
    """bf16 weights and activations vs float32, both with bf16-rounded RoPE frequencies (the official
    default in bf16): within bf16 accumulation error on the image rows."""
    packed, t = _bf16_comparison_inputs()
    image = packed.image_slice
    reference = run(build_tiny_dit(rope_frequency_dtype=torch.bfloat16), packed, t)[:, image]
    bf16 = run(build_tiny_dit(dtype=torch.bfloat16), packed, t, torch.bfloat16)[:, image]
    assert bf16.dtype == torch.float32
    assert _relative_error(bf16, reference) <= 2e-2
    assert max_abs_diff(bf16, reference) <= 3e-2 * reference.abs().max().item()


def test_rope_frequency_rounding_follows_the_compute_dtype_unless_overridden():
    """Default = official (frequencies rounded to bf16 in a bf16 run); float32 frequencies are an option and
    change the result by far more than bf16 noise (image positions ~65536 amplify the rounding)."""
    packed, t = _bf16_comparison_inputs()
    image = packed.image_slice
    default = run(build_tiny_dit(dtype=torch.bfloat16), packed, t, torch.bfloat16)[:, image]
    explicit = run(build_tiny_dit(dtype=torch.bfloat16, rope_frequency_dtype=torch.bfloat16), packed, t,
                   torch.bfloat16)[:, image]
    full = run(build_tiny_dit(dtype=torch.bfloat16, rope_frequency_dtype=torch.float32), packed, t,
               torch.bfloat16)[:, image]
    assert torch.equal(default, explicit)
    reference = run(build_tiny_dit(), packed, t)[:, image]  # float32: unrounded frequencies
    assert _relative_error(full, reference) <= 2e-2
    assert _relative_error(default, reference) > 2 * _relative_error(full, reference)


class _CastLinear(nn.Linear):
    """Like ComfyUI's manual_cast: weights stay as stored, cast to the input's dtype per call."""

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class _CastRMSNorm(nn.RMSNorm):
    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def test_injected_operations_and_compute_dtype_from_the_input():
    """float32-stored weights behind casting ops, fed bf16 activations, compute in bf16: bit-identical to a
    model holding bf16 weights. The compute dtype comes from x, never from the weights."""
    ops = SimpleNamespace(Linear=_CastLinear, RMSNorm=_CastRMSNorm, Embedding=nn.Embedding, LayerNorm=nn.LayerNorm,
                          Conv2d=nn.Conv2d, GroupNorm=nn.GroupNorm)
    cast = build_tiny_dit(dtype=torch.float32, operations=ops)
    assert isinstance(cast.layers[0].attention.qkv, _CastLinear)
    assert isinstance(cast.layers[0].attention.norm_q, _CastRMSNorm)
    plain = build_tiny_dit(dtype=torch.bfloat16)
    packed = pack_conditional(torch.randn(1, 6, CHANNELS), torch.randn(1, 3, FEATURES), None, 2, 3)
    t = torch.tensor([0.3])
    assert torch.equal(run(cast, packed, t, torch.bfloat16), run(plain, packed, t, torch.bfloat16))


def test_model_works_for_other_sizes():
    config = tiny_dit_config(num_layers=1, num_attention_heads=3, attention_head_dim=32, in_channels=16,
                             llm_features_dim=24, intermediate_size=40, adaln_dim=8, mrope_section=(4, 5, 5))
    weights = random_official_state_dict(config, seed=2)
    dit = Ideogram4DiT(config)
    dit.load_state_dict(weights)
    packed = pack_conditional(torch.randn(2, 6, 16), torch.randn(2, 3, 24), [3, 2], 2, 3)
    t = torch.tensor([0.5, 0.25])
    features = torch.zeros(2, 9, 24)
    features[:, :3] = packed.text_features
    with torch.no_grad():
        reference = build_diffusers_oracle(config, weights)(
            hidden_states=packed.x, timestep=t, encoder_hidden_states=features, position_ids=packed.positions,
            segment_ids=official_segment_ids(packed), indicator=packed.indicators).sample
    assert max_abs_diff(run(dit, packed, t), reference) <= 1e-5
