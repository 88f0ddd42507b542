"""MRoPE of the Ideogram 4 DiT against hand-computed values (spec A.5) and the bf16-autocast regression."""

import math

import numpy as np
import pytest
import torch

from ideogram4.constants import IMAGE_POSITION_OFFSET
from ideogram4.packing import image_positions
from ideogram4.rope import MRoPE, apply_rotary, mrope_axis_of_pairs

HEAD_DIM = 256
THETA = 5e6
SECTION = (24, 20, 20)


@pytest.fixture(scope="module")
def rope():
    return MRoPE(HEAD_DIM, THETA, SECTION)


def test_inverse_frequencies_follow_the_formula(rope):
    inv_freq = rope.inverse_frequencies()
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (128,)
    expected = np.array([1.0 / THETA ** (2 * j / HEAD_DIM) for j in range(128)])
    np.testing.assert_allclose(inv_freq.numpy(), expected, rtol=2e-7)
    assert inv_freq[0].item() == 1.0
    assert inv_freq[64].item() == pytest.approx(1 / math.sqrt(5e6), rel=1e-7)  # 5e6 ** -0.5


def test_bfloat16_rounded_frequencies_hand_values(rope):
    """The official model.to(bfloat16) rounds the buffer: 5e6**(-1/128) = 0.886471 -> 227/256,
    5e6**(-2/128) = 0.785830 -> 201/256 (bf16 spacing 1/256 in [0.5, 1))."""
    rounded = rope.inverse_frequencies(torch.bfloat16)
    assert rounded.dtype == torch.float32
    assert rounded[1].item() == 227 / 256
    assert rounded[2].item() == 201 / 256
    assert rounded[0].item() == 1.0


def test_axis_interleave_matches_the_official_rule():
    """Pairs 1, 4, ..., 58 take h; 2, 5, ..., 59 take w; everything else (0, 3, ..., 57 and 60..127) takes t."""
    axis = mrope_axis_of_pairs(HEAD_DIM, SECTION).tolist()
    assert [axis[j] for j in (0, 1, 2, 3, 4, 5, 57, 58, 59, 60, 61, 62, 127)] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 0, 0]
    assert (axis.count(0), axis.count(1), axis.count(2)) == (88, 20, 20)
    # Scaled section for a 64-dim head (32 pairs): h on 1..28 step 3, w on 2..29 step 3.
    small = mrope_axis_of_pairs(64, (12, 10, 10)).tolist()
    assert small[28] == 1 and small[29] == 2 and small[30] == 0 and small[31] == 0


@pytest.mark.parametrize("frequency_dtype", [None, torch.bfloat16])
def test_angles_hand_computed(rope, frequency_dtype):
    """cos/sin of one token at distinct (t, h, w) equal cos/sin of the float32 product pos_axis * inv_freq[j]
    (computed here with numpy float32), and the second half of the head repeats the first."""
    t_pos, h_pos, w_pos = IMAGE_POSITION_OFFSET, IMAGE_POSITION_OFFSET + 9, IMAGE_POSITION_OFFSET + 13
    positions = torch.tensor([[[t_pos, h_pos, w_pos]]])
    cos, sin = rope(positions, frequency_dtype)
    assert cos.dtype == torch.float32 and cos.shape == (1, 1, HEAD_DIM)
    inv_freq = rope.inverse_frequencies(frequency_dtype).numpy()
    for j, pos in ((0, t_pos), (1, h_pos), (2, w_pos), (3, t_pos), (58, h_pos), (59, w_pos), (60, t_pos),
                   (100, t_pos), (127, t_pos)):
        angle = float(np.float32(pos) * inv_freq[j])  # one float32 rounding, like the official matmul
        assert cos[0, 0, j].item() == pytest.approx(math.cos(angle), abs=2e-6), j
        assert sin[0, 0, j].item() == pytest.approx(math.sin(angle), abs=2e-6), j
    assert torch.equal(cos[..., :128], cos[..., 128:]) and torch.equal(sin[..., :128], sin[..., 128:])
    if frequency_dtype is None:
        # Pair 0 has frequency 1: the angle is the t position itself.
        assert cos[0, 0, 0].item() == pytest.approx(math.cos(65536.0), abs=2e-6)


@pytest.mark.parametrize("frequency_dtype", [None, torch.bfloat16])
def test_tables_equal_the_diffusers_mrope_bit_for_bit(rope, frequency_dtype):
    """diffusers' Ideogram4MRoPE runs the official float32 recipe (matmul with inner dim 1, then interleave).
    Casting it with .to(bfloat16) rounds its inv_freq buffer exactly as the official model.to(bfloat16) does."""
    from diffusers.models.transformers.transformer_ideogram4 import Ideogram4MRoPE

    oracle = Ideogram4MRoPE(head_dim=HEAD_DIM, base=5_000_000, mrope_section=SECTION)
    if frequency_dtype is not None:
        oracle = oracle.to(frequency_dtype)
    text = torch.arange(7).unsqueeze(-1).expand(7, 3)
    positions = torch.cat((text, image_positions(5, 6))).unsqueeze(0).expand(2, 37, 3)
    cos, sin = rope(positions, frequency_dtype)
    cos_ref, sin_ref = oracle(positions)
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)


def test_text_positions_are_plain_1d_rope(rope):
    """For text tokens (p, p, p) the interleave is a no-op: angle = p * inv_freq[j] for every pair."""
    positions = torch.tensor([[[5, 5, 5]]])
    cos, _ = rope(positions)
    inv_freq = rope.inverse_frequencies().numpy()
    expected = np.cos((np.float32(5) * inv_freq).astype(np.float64))
    np.testing.assert_allclose(cos[0, 0, :128].numpy(), expected, atol=2e-6)


def test_autocast_bf16_keeps_every_image_position_distinct(rope):
    """Regression of diffusers #13920: a 256x256 image is 16x16 = 256 tokens at positions 65536 + (0, r, c).
    Under an ambient CPU bf16 autocast the tables must equal the float32 ones exactly and hold 256 distinct rows
    (also after the cast to bf16 that the attention uses)."""
    positions = image_positions(16, 16).unsqueeze(0)
    # The hazard is real: in bf16 all 256 positions collapse onto a single value.
    assert torch.unique(positions.to(torch.bfloat16)[0, :, 1:].float(), dim=0).shape[0] == 1
    cos_ref, sin_ref = rope(positions, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = rope(positions, torch.bfloat16)
    assert cos.dtype == torch.float32
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)
    for table in (cos, sin, cos.to(torch.bfloat16), sin.to(torch.bfloat16)):
        assert torch.unique(table[0], dim=0).shape[0] == 256


def test_apply_rotary_uses_the_rotate_half_convention():
    """Head (a, b, c, d): pair j couples element j with j + D/2 -> (a cos0 - c sin0, b cos1 - d sin1,
    c cos0 + a sin0, d cos1 + b sin1)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    angles = torch.tensor([0.3, -1.1])
    cos = torch.cat((angles.cos(), angles.cos()))
    sin = torch.cat((angles.sin(), angles.sin()))
    c0, c1, s0, s1 = math.cos(0.3), math.cos(-1.1), math.sin(0.3), math.sin(-1.1)
    expected = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
    np.testing.assert_allclose(apply_rotary(x, cos, sin).numpy(), expected, atol=1e-6)
    bf16 = apply_rotary(x.bfloat16(), cos.bfloat16(), sin.bfloat16())
    assert bf16.dtype == torch.bfloat16  # rotation stays in the activation dtype


def test_rejects_float_positions(rope):
    with pytest.raises(TypeError, match="integers"):
        rope(torch.zeros(1, 2, 3))
