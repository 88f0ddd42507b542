"""Sequence packing (spec A.3, official ``_build_inputs``) and the velocity wrappers around the DiT."""

import pytest
import torch
from tiny_dit import TINY_CONFIG, build_tiny_dit, max_abs_diff

from ideogram4.constants import (
    IMAGE_POSITION_OFFSET,
    LLM_TOKEN_INDICATOR,
    OUTPUT_IMAGE_INDICATOR,
    SEQUENCE_PADDING_INDICATOR,
)
from ideogram4.packing import pack_conditional, pack_unconditional
from ideogram4.velocity import conditional_velocity, default_compute_dtype, unconditional_velocity

OFF = IMAGE_POSITION_OFFSET


def official_layout(text_lengths, grid_h, grid_w):
    """Independent transcription of the official per-sample loop: positions, segment ids, indicators."""
    text_length = max(text_lengths)
    count = grid_h * grid_w
    total = text_length + count
    image = [(OFF, OFF + r, OFF + c) for r in range(grid_h) for c in range(grid_w)]
    positions, segments, indicators = [], [], []
    for n in text_lengths:
        pad = text_length - n
        positions.append([(0, 0, 0)] * pad + [(p, p, p) for p in range(n)] + image)
        segments.append([SEQUENCE_PADDING_INDICATOR] * pad + [1] * (n + count))
        indicators.append([0] * pad + [LLM_TOKEN_INDICATOR] * n + [OUTPUT_IMAGE_INDICATOR] * count)
    assert all(len(row) == total for row in positions)
    return torch.tensor(positions), torch.tensor(segments), torch.tensor(indicators)


def test_single_prompt_layout_has_no_padding_and_no_mask():
    latent = torch.randn(1, 6, 8)
    features = torch.randn(1, 3, 5)
    packed = pack_conditional(latent, features, None, 2, 3)
    assert packed.image_slice == slice(3, 9)
    assert packed.attention_mask is None
    assert packed.positions[0].tolist() == [
        [0, 0, 0], [1, 1, 1], [2, 2, 2],
        [OFF, OFF, OFF], [OFF, OFF, OFF + 1], [OFF, OFF, OFF + 2],
        [OFF, OFF + 1, OFF], [OFF, OFF + 1, OFF + 1], [OFF, OFF + 1, OFF + 2]]
    assert packed.indicators[0].tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2]
    assert torch.equal(packed.x[:, 3:], latent) and not packed.x[:, :3].any()
    assert packed.text_features.data_ptr() == features.data_ptr()  # used in place, no copy


def test_prompts_of_different_lengths_are_left_padded_with_a_segment_mask():
    features = torch.randn(2, 4, 5)  # left-padded: sample 0's 2 real tokens are its last 2 rows
    latent = torch.randn(2, 2, 8)
    packed = pack_conditional(latent, features, [2, 4], 1, 2)
    positions, segments, indicators = official_layout([2, 4], 1, 2)
    assert torch.equal(packed.positions, positions)
    assert torch.equal(packed.indicators, indicators)
    assert torch.equal(packed.attention_mask[:, 0], segments[:, :, None] == segments[:, None, :])
    assert packed.image_slice == slice(4, 6)
    # Already in the official layout: passed on as is (rows 0-1 of sample 0 are masked out by the DiT).
    assert packed.text_features.data_ptr() == features.data_ptr() and torch.equal(packed.text_features, features)
    mask = packed.attention_mask
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 6, 6)
    # Sample 0: padding rows 0-1 see only each other; text and image rows 2-5 see only each other.
    assert mask[0, 0, 0].tolist() == [True, True, False, False, False, False]
    assert mask[0, 0, 4].tolist() == [False, False, True, True, True, True]
    assert mask[1].all()


def test_layout_matches_the_official_loop_for_a_batch_of_three():
    lengths = [3, 1, 5]
    packed = pack_conditional(torch.randn(3, 12, 8), torch.randn(3, 6, 5), lengths, 3, 4)
    positions, segments, indicators = official_layout(lengths, 3, 4)
    assert torch.equal(packed.positions, positions)
    assert torch.equal(packed.indicators, indicators)
    expected_mask = segments[:, :, None] == segments[:, None, :]
    assert torch.equal(packed.attention_mask[:, 0], expected_mask)


def test_equal_lengths_shorter_than_the_feature_rows_need_no_mask():
    features = torch.randn(2, 7, 5)  # both prompts 3 tokens, left-padded to 7: the last 3 rows are real
    packed = pack_conditional(torch.randn(2, 4, 8), features, [3, 3], 2, 2)
    assert packed.attention_mask is None
    assert packed.image_slice == slice(3, 7)
    assert torch.equal(packed.text_features, features[:, 4:])
    assert packed.indicators[0, :3].tolist() == [LLM_TOKEN_INDICATOR] * 3


def test_unconditional_is_the_image_block_of_the_conditional_layout():
    latent = torch.randn(2, 6, 8)
    conditional = pack_conditional(latent, torch.randn(2, 4, 5), [4, 2], 2, 3)
    unconditional = pack_unconditional(latent, 2, 3)
    image = conditional.image_slice
    assert torch.equal(unconditional.positions, conditional.positions[:, image])
    assert conditional.attention_mask[:, :, image, image].all()  # image rows see every image row: no mask needed
    assert torch.equal(unconditional.indicators, conditional.indicators[:, image])
    assert torch.equal(unconditional.x, latent)
    assert unconditional.text_features is None and unconditional.attention_mask is None
    assert unconditional.image_slice == slice(0, 6)


def test_packing_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="grid 2x3 needs 6"):
        pack_unconditional(torch.randn(1, 5, 8), 2, 3)
    with pytest.raises(ValueError, match="text_lengths"):
        pack_conditional(torch.randn(1, 6, 8), torch.randn(1, 3, 5), [4], 2, 3)
    with pytest.raises(ValueError, match="text_features"):
        pack_conditional(torch.randn(2, 6, 8), torch.randn(1, 3, 5), None, 2, 3)


@pytest.fixture(scope="module")
def model():
    return build_tiny_dit(seed=3)


@torch.no_grad()
def test_velocities_are_the_image_rows_of_the_model_output(model):
    grid_h, grid_w = 3, 4
    z = torch.randn(1, 12, TINY_CONFIG.in_channels)
    features = torch.randn(1, 5, TINY_CONFIG.llm_features_dim)
    t = 0.4375
    packed = pack_conditional(z, features, None, grid_h, grid_w)
    expected = model(packed.x, torch.tensor([t]), packed.text_features, packed.positions,
                     packed.indicators, packed.attention_mask)[:, packed.image_slice]
    velocity = conditional_velocity(model, z, t, features, None, grid_h, grid_w)
    assert velocity.dtype == torch.float32 and velocity.shape == z.shape
    assert torch.equal(velocity, expected)

    packed = pack_unconditional(z, grid_h, grid_w)
    expected = model(packed.x, torch.tensor([t]), None, packed.positions, packed.indicators)
    assert torch.equal(unconditional_velocity(model, z, t, grid_h, grid_w), expected)


@torch.no_grad()
def test_batched_prompts_give_each_prompt_its_own_velocity(model):
    """Two prompts of different lengths in one batch (left padding + segment mask) give the velocities each
    prompt gets alone (unpadded, no mask). The padding rows of the features hold random values: ignored."""
    grid_h, grid_w = 2, 3
    z = torch.randn(2, 6, TINY_CONFIG.in_channels)
    features = torch.randn(2, 7, TINY_CONFIG.llm_features_dim)
    lengths = [4, 7]
    batched = conditional_velocity(model, z, 0.25, features, lengths, grid_h, grid_w)
    for b, n in enumerate(lengths):
        alone = conditional_velocity(model, z[b:b + 1], 0.25, features[b:b + 1, 7 - n:], None, grid_h, grid_w)
        assert max_abs_diff(batched[b:b + 1], alone) <= 1e-5


@torch.no_grad()
def test_velocity_casts_to_the_compute_dtype_and_returns_float32(model):
    z = torch.randn(1, 4, TINY_CONFIG.in_channels)
    model_bf16 = build_tiny_dit(seed=3, dtype=torch.bfloat16)
    for dit, dtype, expected in ((model_bf16, None, torch.bfloat16), (model, torch.float32, torch.float32)):
        seen = []
        handle = dit.input_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
        try:
            out = unconditional_velocity(dit, z, 0.5, 2, 2, dtype=dtype)
        finally:
            handle.remove()
        assert seen == [expected]
        assert out.dtype == torch.float32


def test_default_compute_dtype_follows_plain_weights_and_falls_back_to_bf16():
    assert default_compute_dtype(build_tiny_dit(dtype=torch.bfloat16)) == torch.bfloat16
    assert default_compute_dtype(build_tiny_dit(dtype=torch.float32)) == torch.float32

    class Fp8Weights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_proj = torch.nn.Linear(2, 2)
            self.input_proj.weight.data = self.input_proj.weight.data.to(torch.float8_e4m3fn)

    assert default_compute_dtype(Fp8Weights()) == torch.bfloat16


def test_left_align_moves_right_padded_rows_to_the_end_in_order():
    from ideogram4.packing import left_align_text_features

    features = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])  # sample 0: ComfyUI's right padding; sample 1: no padding
    aligned, lengths = left_align_text_features(features, mask)
    assert lengths == [2, 4]
    assert torch.equal(aligned[0], torch.cat([torch.zeros(2, 3), features[0, :2]]))
    assert torch.equal(aligned[1], features[1])
