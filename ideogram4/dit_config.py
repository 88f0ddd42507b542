"""Hyper-parameters of the Ideogram 4 DiT (spec A.1).

The defaults are the released model (9.28 B parameters). Every dimension may be changed: the tests build tiny
models from the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .constants import TOKEN_CHANNELS


@dataclass(frozen=True)
class DiTConfig:
    num_layers: int = 34
    num_attention_heads: int = 18
    attention_head_dim: int = 256
    intermediate_size: int = 12288  # SwiGLU hidden width
    adaln_dim: int = 512  # width of the shared timestep conditioning fed to every adaln_modulation
    in_channels: int = TOKEN_CHANNELS  # = out channels: 32 VAE channels x 2x2 patch
    llm_features_dim: int = 53248  # 13 tapped Qwen3-VL layers x 4096
    rope_theta: float = 5e6
    # (t, h, w) section sizes of the interleaved MRoPE. Only the h and w entries are read: frequency pairs
    # 1, 4, ..., 3*h-2 take the h axis, 2, 5, ..., 3*w-1 the w axis, every other pair the t axis (spec A.5).
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    norm_eps: float = 1e-5  # attention_norm1/2, ffn_norm1/2
    qk_norm_eps: float = 1e-5  # per-head norm_q / norm_k (hard-coded in the official model)
    llm_cond_norm_eps: float = 1e-6
    final_norm_eps: float = 1e-6  # the affine-free LayerNorm before final_layer.linear

    def __post_init__(self) -> None:
        object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        positive = ("num_layers", "num_attention_heads", "attention_head_dim", "intermediate_size", "adaln_dim",
                    "in_channels", "llm_features_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive integer, got {value!r}.")
        if self.attention_head_dim % 2:
            raise ValueError(
                f"DiTConfig.attention_head_dim must be even for rotary embeddings, got {self.attention_head_dim}.")
        if len(self.mrope_section) != 3:
            raise ValueError(f"DiTConfig.mrope_section must hold three (t, h, w) sizes, got {self.mrope_section}.")
        pairs = self.attention_head_dim // 2
        if any(s < 0 for s in self.mrope_section) or 3 * max(self.mrope_section[1:]) > pairs:
            raise ValueError(
                f"DiTConfig.mrope_section={self.mrope_section} does not fit attention_head_dim="
                f"{self.attention_head_dim}: the interleaved MRoPE writes frequency pairs up to 3*section-1, so the "
                f"h and w sections must be at most {pairs // 3} (= head_dim/2/3). Scale the section down for small "
                f"heads, e.g. (12, 10, 10) for head_dim 64.")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_official_json(cls, config: dict) -> "DiTConfig":
        """Build from a ``config.json`` of the released transformers.

        Accepts the diffusers-style keys of the published repos (``num_attention_heads``, ``attention_head_dim``,
        ``adaln_dim``, ...) and the official dataclass names (``emb_dim``, ``num_heads``, ``adanln_dim``).
        Unknown keys (``_class_name``, ``_diffusers_version``, ...) are ignored; missing keys keep the defaults.
        """
        if not isinstance(config, dict):
            raise TypeError(f"DiTConfig.from_official_json expects the parsed config.json dict, got {type(config)}.")
        aliases = {"num_heads": "num_attention_heads", "adanln_dim": "adaln_dim"}
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in config.items():
            name = aliases.get(key, key)
            if name in known:
                values[name] = value
        if "emb_dim" in config and "attention_head_dim" not in values:
            heads = values.get("num_attention_heads", cls.num_attention_heads)
            if config["emb_dim"] % heads:
                raise ValueError(
                    f"config.json: emb_dim={config['emb_dim']} is not divisible by num_heads={heads}.")
            values["attention_head_dim"] = config["emb_dim"] // heads
        config_obj = cls(**values)
        if "emb_dim" in config and config["emb_dim"] != config_obj.hidden_size:
            raise ValueError(
                f"config.json: emb_dim={config['emb_dim']} disagrees with num_attention_heads x attention_head_dim "
                f"= {config_obj.hidden_size}.")
        return config_obj
