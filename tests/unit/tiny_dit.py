"""Test helpers for the DiT: a tiny config, random weights in the official key layout, and the diffusers oracle.

Import from a test in tests/unit with ``from tiny_dit import ...`` (pytest puts this folder on sys.path).

MRoPE at small head sizes: the official interleave writes frequency pairs up to 3 * section - 1, so the released
(24, 20, 20) needs head_dim >= 120 (it indexes out of range below). Like diffusers' own tests (head_dim 8 with
(2, 1, 1)), tiny configs scale the section with the head: head_dim 64 -> 32 pairs -> (12, 10, 10), i.e. the
released proportions, still with 10 h pairs and 10 w pairs interleaved with t.
"""

from __future__ import annotations

import torch

from ideogram4.constants import SEQUENCE_PADDING_INDICATOR
from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_config import DiTConfig

TINY_CONFIG = DiTConfig(
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=64,
    intermediate_size=256,
    adaln_dim=32,
    in_channels=128,
    llm_features_dim=96,
    rope_theta=5e6,
    mrope_section=(12, 10, 10),
)


def tiny_dit_config(**overrides) -> DiTConfig:
    """TINY_CONFIG with some fields replaced."""
    fields = {name: getattr(TINY_CONFIG, name) for name in TINY_CONFIG.__dataclass_fields__}
    fields.update(overrides)
    return DiTConfig(**fields)


def random_official_state_dict(config: DiTConfig = TINY_CONFIG, seed: int = 0,
                               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with the official key names and shapes of ``config``.

    Scaled so activations stay O(1) through the network and every term matters: Linear weights N(0, 1/fan_in),
    biases N(0, 0.1^2), norm weights 1 + N(0, 0.1^2), indicator embedding N(0, 0.5^2). Deterministic in ``seed``.
    """
    # Built on the CPU, not "meta": a tiny model costs nothing, while the first meta-device model costs seconds.
    shapes = {name: tuple(p.shape) for name, p in Ideogram4DiT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if "norm" in name:
            value = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.1 * noise
        elif name == "embed_image_indicator.weight":
            value = 0.5 * noise
        else:
            value = noise / shape[1] ** 0.5
        state[name] = value.to(dtype)
    return state


def build_tiny_dit(config: DiTConfig = TINY_CONFIG, seed: int = 0, dtype: torch.dtype = torch.float32,
                   operations=None, **kwargs) -> Ideogram4DiT:
    """An eval-mode Ideogram4DiT with :func:`random_official_state_dict` weights loaded strictly."""
    model = Ideogram4DiT(config, dtype=dtype, operations=operations, **kwargs)
    model.load_state_dict(random_official_state_dict(config, seed, dtype), strict=True)
    return model.eval()


def official_to_diffusers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys -> diffusers ``Ideogram4Transformer2DModel`` keys.

    ``attention.qkv`` (3*hidden, hidden) splits in row thirds into ``to_q`` / ``to_k`` / ``to_v``;
    ``attention.o`` becomes ``attention.to_out.0``; every other key is shared.
    """
    converted = {}
    for name, value in state.items():
        if name.endswith(".attention.qkv.weight"):
            prefix = name[: -len("qkv.weight")]
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                converted[f"{prefix}{part}.weight"] = chunk.clone()
        elif ".attention.o." in name:
            converted[name.replace(".attention.o.", ".attention.to_out.0.")] = value
        else:
            converted[name] = value
    return converted


def official_segment_ids(packed) -> torch.Tensor:
    """The official model's segment ids, which diffusers takes (the pack derives its mask without them): padding
    rows (indicator 0) -1, the rest 1."""
    return torch.where(packed.indicators == 0, SEQUENCE_PADDING_INDICATOR, 1)


def build_diffusers_oracle(config: DiTConfig, official_state: dict[str, torch.Tensor],
                           dtype: torch.dtype = torch.float32):
    """diffusers 0.42.1 Ideogram4Transformer2DModel with the same weights (strict load).

    diffusers hard-codes the eps values the config carries (q/k 1e-5, llm_cond 1e-6, final 1e-6), so the config
    must use those.
    """
    from diffusers import Ideogram4Transformer2DModel

    if (config.qk_norm_eps, config.llm_cond_norm_eps, config.final_norm_eps) != (1e-5, 1e-6, 1e-6):
        raise ValueError("diffusers hard-codes qk_norm_eps=1e-5, llm_cond_norm_eps=1e-6, final_norm_eps=1e-6.")
    oracle = Ideogram4Transformer2DModel(
        in_channels=config.in_channels,
        num_layers=config.num_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        adaln_dim=config.adaln_dim,
        llm_features_dim=config.llm_features_dim,
        rope_theta=config.rope_theta,
        mrope_section=config.mrope_section,
        norm_eps=config.norm_eps,
    )
    oracle.load_state_dict(official_to_diffusers_state_dict(official_state), strict=True)
    return oracle.to(dtype).eval()


def max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in float64, after checking the shapes agree (cheaper to import than
    torch.testing.assert_close, whose first call costs seconds)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return (actual.double() - expected.double()).abs().max().item()
