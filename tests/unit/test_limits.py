"""Size limits and the activation estimate (ideogram4.limits), and the DiT's per-block callback."""

import pytest
import torch
from tiny_dit import TINY_CONFIG, random_official_state_dict

from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_config import DiTConfig
from ideogram4.limits import (
    MAX_IMAGE_SIDE,
    MAX_IMAGE_TOKENS,
    activation_bytes,
    activation_bytes_per_token,
    largest_square_side,
    size_problem,
)
from ideogram4.velocity import unconditional_velocity


def test_the_ceiling_is_4096_square_or_65536_tokens():
    assert (MAX_IMAGE_SIDE, MAX_IMAGE_TOKENS) == (4096, 65536)


@pytest.mark.parametrize("value, says", [
    (250, "got 250; use 256"), (8, "use 16"), (0, "positive multiple of 16"), (-16, "positive multiple of 16"),
    (4112, "above the limit of 4096 px"), (16384, "above the limit of 4096 px"), (512.0, "whole number"),
])
def test_size_problem_names_the_input_and_the_fix(value, says):
    problem = size_problem("width", value)
    assert problem is not None and problem.startswith("width") and says in problem


@pytest.mark.parametrize("value", [16, 1024, 2048, 4096])
def test_usable_sizes_have_no_problem(value):
    assert size_problem("height", value) is None


def test_zero_is_allowed_only_where_it_means_off():
    assert size_problem("official_width", 0, allow_zero=True) is None
    assert "(or 0)" in size_problem("official_width", 250, allow_zero=True)


def test_activation_estimate_of_the_released_model_by_hand():
    config = DiTConfig()  # hidden 18 x 256 = 4608, SwiGLU 12288: the SwiGLU branch (3 x 12288) is the larger
    assert activation_bytes_per_token(config, 2) == (2 * 4608 + 3 * 12288) * 2 == 92160
    # 2048 x 2048 = 16384 image tokens + 500 text tokens, batch 1, bf16
    assert activation_bytes(config, 1, 16384, 500, 2) == 16884 * 92160
    # with 8 GiB, bf16, 500 text tokens: 8 GiB // 92160 = 93206 rows, 92706 image tokens, isqrt 304 -> 4864, capped
    assert largest_square_side(config, 1, 500, 2, 8 << 30) == MAX_IMAGE_SIDE
    # with 1 GiB: 1 GiB // 92160 = 11650 rows, 11150 image tokens, isqrt 105 -> 1680 px
    assert largest_square_side(config, 1, 500, 2, 1 << 30) == 1680
    assert largest_square_side(config, 1, 500, 2, 1000) == 0


def test_block_callback_runs_before_every_block_and_can_stop_the_forward():
    model = Ideogram4DiT(TINY_CONFIG)
    model.load_state_dict(random_official_state_dict(TINY_CONFIG))
    ran, seen = [], []
    for index, block in enumerate(model.layers):
        block.register_forward_pre_hook(lambda module, args, index=index: ran.append(index))
    z = torch.randn(1, 4, 128)
    expected = unconditional_velocity(model, z, 0.5, 2, 2)

    model.block_callback = seen.append
    assert torch.equal(unconditional_velocity(model, z, 0.5, 2, 2), expected)  # it never changes the result
    assert seen == ran[2:] == [0, 1]

    class Stop(Exception):
        pass

    def stop_at_block_1(index):
        if index == 1:
            raise Stop

    ran.clear()
    model.block_callback = stop_at_block_1
    with pytest.raises(Stop):
        unconditional_velocity(model, z, 0.5, 2, 2)
    assert ran == [0]  # block 1 never ran
