"""The benchmark's FLOP model (benchmarks/flops.py) against a hand count and against torch's own FLOP counter."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import forward_flops, image_tokens_for, step_flops
from ideogram4.dit import TransformerBlock
from ideogram4.dit_config import DiTConfig

# hidden = 2 heads x 6 = 12; every other width distinct so a swapped factor changes the count.
HAND_CONFIG = DiTConfig(num_layers=1, num_attention_heads=2, attention_head_dim=6, intermediate_size=20, adaln_dim=4,
                        in_channels=8, llm_features_dim=10, mrope_section=(1, 1, 1))


def test_forward_flops_matches_a_hand_count():
    # batch 2, 3 text + 5 image tokens -> 16 token rows, 6 text rows, 2 per-sample rows.
    flops = forward_flops(HAND_CONFIG, image_tokens=5, text_tokens=3, batch=2)
    qkv = 2 * 16 * 12 * 36
    o = 2 * 16 * 12 * 12
    w1_w3 = 2 * (2 * 16 * 12 * 20)
    w2 = 2 * 16 * 20 * 12
    input_proj = 2 * 16 * 8 * 12
    final_linear = 2 * 16 * 12 * 8
    assert flops.token_linears == input_proj + qkv + o + w1_w3 + w2 + final_linear == 47616
    assert flops.text_linears == 2 * 6 * 10 * 12 == 1440
    t_embedding = 2 * (2 * 2 * 12 * 12)
    adaln_proj = 2 * 2 * 12 * 4
    block_modulation = 2 * 2 * 4 * 48
    final_modulation = 2 * 2 * 4 * 12
    assert flops.conditioning_linears == t_embedding + adaln_proj + block_modulation + final_modulation == 2304
    # QK^T and AV: 2 products x 2 FLOP x batch 2 x 8 x 8 positions x 12 channels, one block.
    assert flops.attention == 2 * (2 * 2 * 8 * 8 * 12) == 6144
    assert flops.total == 57504


def test_step_is_conditional_plus_image_only_forward():
    conditional = forward_flops(HAND_CONFIG, image_tokens=5, text_tokens=3).total
    unconditional = forward_flops(HAND_CONFIG, image_tokens=5, text_tokens=0).total
    assert unconditional < conditional
    assert step_flops(HAND_CONFIG, image_tokens=5, text_tokens=3) == conditional + unconditional


def test_block_flops_agree_with_torch_flop_counter_on_the_pack_block():
    """torch counts what the pack's TransformerBlock actually multiplies: the model must say the same."""
    config = DiTConfig(num_layers=1, num_attention_heads=2, attention_head_dim=8, intermediate_size=24,
                       adaln_dim=4, in_channels=8, llm_features_dim=10, mrope_section=(2, 1, 1))
    batch, length = 2, 7
    block = TransformerBlock(config).eval()
    h = torch.randn(batch, length, config.hidden_size)
    adaln_input = torch.randn(batch, 1, config.adaln_dim)
    cos = torch.ones(batch, length, 1, config.attention_head_dim)
    sin = torch.zeros(batch, length, 1, config.attention_head_dim)
    counter = FlopCounterMode(display=False)
    # The math backend runs attention as two batched matmuls, which the counter sees (the fused CPU kernel is not
    # registered with it).
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        block(h, adaln_input, cos, sin, None)

    model = forward_flops(config, image_tokens=length, text_tokens=0, batch=batch)
    hidden = config.hidden_size
    outside_blocks = (2 * batch * length * config.in_channels * hidden * 2  # input_proj + final_layer.linear
                      + 2 * (2 * batch * hidden * hidden) + 2 * batch * hidden * config.adaln_dim
                      + 2 * batch * config.adaln_dim * hidden)
    assert counter.get_total_flops() == model.total - outside_blocks


def test_full_size_step_flops_at_1024():
    """Released config, one 128-token prompt at 1024^2: about 166 TFLOP per step (cond 4224 + uncond 4096 tokens)."""
    tokens = image_tokens_for(1024, 1024)
    assert tokens == 4096
    total = step_flops(DiTConfig(), image_tokens=tokens, text_tokens=128)
    assert 165.9e12 < total < 166.0e12
