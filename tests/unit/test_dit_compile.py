"""ideogram4.compile: compiled transformer blocks reproduce the eager DiT (bf16 bits included) and can be undone.

The oracle is the eager pack itself (its parity with diffusers / official is tested in test_dit_parity.py).
One tiny shape (1 sample, 4 x 4 image grid, 5 text tokens) keeps the compilation to one graph per dtype.
"""

from __future__ import annotations

import pytest
import torch
from tiny_dit import build_tiny_dit, max_abs_diff

from ideogram4.compile import compile_transformer_blocks, uncompile_transformer_blocks
from ideogram4.velocity import conditional_velocity

GRID = 4
TEXT_TOKENS = 5


def _velocity(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(1, GRID * GRID, model.config.in_channels, generator=generator)
    features = torch.randn(1, TEXT_TOKENS, model.config.llm_features_dim, generator=generator)
    with torch.no_grad():
        return conditional_velocity(model, z, 0.37, features, None, GRID, GRID)


def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_compiled_blocks_match_eager_and_uncompile_restores_it(dtype):
    model = build_tiny_dit(dtype=dtype)
    eager = _velocity(model)
    assert all("forward" not in vars(block) for block in model.layers)

    frames_before = _compiled_frames()
    compile_transformer_blocks(model)
    compiled_forwards = [vars(block).get("forward") for block in model.layers]
    compile_transformer_blocks(model)  # idempotent: a second call leaves the blocks as they are
    assert all(forward is not None for forward in compiled_forwards)  # each block runs its own compiled forward
    assert [vars(block).get("forward") for block in model.layers] == compiled_forwards
    compiled = _velocity(model)
    # Dynamo really compiled a frame (otherwise the comparison below would be eager against eager).
    assert _compiled_frames() > frames_before

    if dtype == torch.bfloat16:
        # emulate_precision_casts keeps eager's bf16 rounding points: the same bits, not just close.
        assert torch.equal(compiled, eager), f"max |compiled - eager| = {max_abs_diff(compiled, eager)}"
    else:
        assert max_abs_diff(compiled, eager) <= 1e-6

    uncompile_transformer_blocks(model)
    assert all("forward" not in vars(block) for block in model.layers)
    assert torch.equal(_velocity(model), eager)


def test_compile_rejects_a_non_dit():
    with pytest.raises(TypeError, match="Ideogram4DiT"):
        compile_transformer_blocks(torch.nn.Linear(2, 2))
