"""Ideogram 4 LoRA files: which transformer weight each key patches, for every trainer's layout.

A LoRA file holds, per adapted module, a few tensors under ``<stem>.<parameter>``: ``lora_A/lora_B`` (diffusers,
PEFT, ai-toolkit), ``lora_down/lora_up`` + ``alpha`` (kohya), ``lokr_w1/w2..`` (LyCORIS LoKr), ``hada_w1_a..``
(LyCORIS LoHa), ``dora_scale`` (DoRA), ``diff``/``diff_b`` (full-weight differences). Stems name the module in
one of these ways, with or without the prefixes of :data:`STEM_PREFIXES`:

* the official module names: ``layers.3.attention.qkv``, ``attention.o``, ``feed_forward.w1/w2/w3``,
  ``adaln_modulation``, and the embedders (``input_proj``, ``llm_cond_proj``, ``t_embedding.mlp_in/mlp_out``,
  ``adaln_proj``, ``final_layer.linear``, ``final_layer.adaln_modulation``);
* the diffusers module names (``Ideogram4Transformer2DModel``): ``attention.to_q/to_k/to_v`` are the row thirds
  of the fused ``qkv`` (q rows first, spec B.3), ``attention.to_out.0`` is ``attention.o``, the rest are shared;
* either of the above with dots written as underscores (kohya ``lora_unet_layers_3_attention_qkv``, LyCORIS
  ``lycoris_layers_3_attention_to_q``).

:func:`map_lora_keys` turns a file into one internal form, the one ComfyUI's ``comfy.lora.load_lora`` reads: the
tensors under their stems and a key map ``{stem: target}``, where a target is an official weight key
(``"layers.3.attention.o.weight"``) or, for a q/k/v third, ``(qkv weight key, (0, row offset, rows))``. Two
things the key map cannot say are written into the tensors: the ``alpha`` a PEFT adapter config gives (PEFT files
store none), and a PEFT DoRA magnitude (``lora_magnitude_vector``) as the ``dora_scale`` ComfyUI reads. Keys that
name no weight are listed in :attr:`LoraKeyMap.unmapped`; a file where nothing maps raises :class:`LoraFormatError`.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .safetensors_io import CheckpointError, read_safetensors

# Tried in this order, repeatedly, until the stem names a module (``base_model.model.transformer.x`` works too).
STEM_PREFIXES = ("base_model.model.", "diffusion_model.", "conditional_transformer.", "transformer.", "model.",
                 "unet.", "lora_unet_", "lora_transformer_", "lycoris_")

# Parameter names after ``<stem>.`` that ComfyUI's weight adapters read (comfy.weight_adapter and comfy.lora).
ADAPTER_PARAMETERS = (
    "lora_A.weight", "lora_B.weight", "lora_A.default.weight", "lora_B.default.weight", "lora_A", "lora_B",
    "lora_down.weight", "lora_up.weight", "lora_mid.weight", "lora.down.weight", "lora.up.weight", "alpha",
    "dora_scale", "lora_magnitude_vector",
    "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "diff", "diff_b", "set_weight", "reshape_weight",
)
# The trainer family each parameter belongs to, for the log.
_FAMILIES = {"lora_A": "LoRA (diffusers/PEFT, ai-toolkit)", "lora_down": "LoRA (kohya)", "lora.down": "LoRA",
             "lokr_": "LyCORIS LoKr", "hada_": "LyCORIS LoHa", "dora_scale": "DoRA",
             "lora_magnitude_vector": "DoRA (PEFT)", "diff": "full-weight diff", "set_weight": "full-weight set"}

UNDERSTOOD_FORMATS = (
    "official module names (layers.N.attention.qkv / attention.o / feed_forward.w1,w2,w3 / adaln_modulation, "
    "embedders), diffusers/PEFT names (attention.to_q,to_k,to_v / to_out.0) with lora_A/lora_B and alpha from "
    "adapter_config.json or the file's metadata, kohya lora_unet_* with lora_down/lora_up/alpha, ai-toolkit "
    "diffusion_model.*, LyCORIS (lycoris_*) LoKr and LoHa, DoRA (dora_scale / lora_magnitude_vector), full-weight "
    "diff/diff_b; prefixes diffusion_model., transformer., model., base_model.model."
)
# ``lora_adapter_metadata``: the safetensors metadata entry diffusers writes the LoRA config to.
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
ADAPTER_CONFIG_NAME = "adapter_config.json"

class LoraFormatError(CheckpointError):
    """A LoRA file that patches nothing of the Ideogram 4 transformer, or whose adapter config is unreadable."""


@dataclass
class LoraKeyMap:
    """One LoRA file in the form ``comfy.lora.load_lora(tensors, key_map)`` reads (targets without any model
    prefix; the host adds its own). ``unmapped`` lists the file keys that patch nothing, sorted."""

    tensors: dict[str, torch.Tensor]
    key_map: dict[str, object]
    unmapped: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)

    def describe_unmapped(self, shown: int = 5) -> str:
        """``"3 keys: a, b, c"`` / ``"12 keys, e.g.: a, b, c, d, e"``, or ``""`` when every key maps."""
        if not self.unmapped:
            return ""
        count = len(self.unmapped)
        head = ", ".join(self.unmapped[:shown])
        return f"{count} key{'s' if count != 1 else ''}{', e.g.' if count > shown else ''}: {head}"


def module_aliases(weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, object]:
    """Every name a LoRA stem may use for a weight of the model -> its target (see the module docstring).

    ``weight_shapes``: the model's official ``<module>.weight`` keys (no prefix) and their shapes.
    """
    aliases: dict[str, object] = {}
    for key, shape in weight_shapes.items():
        if not key.endswith(".weight"):
            continue
        module = key[: -len(".weight")]
        names: dict[str, object] = {module: key}
        if module.endswith(".attention.qkv"):
            rows = shape[0] // 3
            base = module[: -len("qkv")]
            for index, part in enumerate(("to_q", "to_k", "to_v")):
                names[base + part] = (key, (0, index * rows, rows))
        elif module.endswith(".attention.o"):
            names[module[: -len("o")] + "to_out.0"] = key
        for name, target in names.items():
            aliases[name] = target
            aliases[name.replace(".", "_")] = target
    return aliases


def split_adapter_key(key: str) -> tuple[str, str] | None:
    """``(stem, parameter)`` when ``key`` ends in one of :data:`ADAPTER_PARAMETERS`, else None."""
    for parameter in ADAPTER_PARAMETERS:
        if key.endswith("." + parameter):
            return key[: -len(parameter) - 1], parameter
    return None


def _resolve_stem(stem: str, aliases: Mapping[str, object]) -> tuple[str, object] | None:
    """(the module name the stem uses once its prefixes are gone, target) or None."""
    name = stem
    while name not in aliases:
        for prefix in STEM_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        else:
            return None
    return name, aliases[name]


def _family(parameter: str) -> str | None:
    for marker, family in _FAMILIES.items():
        if parameter.startswith(marker):
            return family
    return None


def _pattern_value(patterns: Mapping[str, object], module: str):
    """PEFT ``rank_pattern``/``alpha_pattern`` lookup: a key matches the module path or a dotted suffix of it; a
    key starting with ``^`` (diffusers writes these) is a regular expression anchored at the start."""
    for pattern, value in patterns.items():
        if pattern.startswith("^"):
            if re.match(pattern + r"$", module):
                return value
        elif re.fullmatch(rf"(.*\.)?{pattern}", module):
            return value
    return None


def peft_alpha(config: Mapping, module: str, rank: int) -> float:
    """The ``alpha`` that gives ComfyUI's ``alpha / rank`` scale the PEFT scaling of ``module`` under ``config``:
    ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per-module ``alpha_pattern`` first."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
    if alpha is None:
        alpha = config.get("lora_alpha", rank)
    if config.get("use_rslora"):
        return float(alpha) * rank / math.sqrt(rank)
    return float(alpha)


def map_lora_keys(state: Mapping[str, torch.Tensor], weight_shapes: Mapping[str, tuple[int, ...]],
                  adapter_config: Mapping | None = None) -> LoraKeyMap:
    """Recognise ``state`` (a LoRA file's tensors) against the model's ``weight_shapes`` (official keys).

    ``adapter_config``: a PEFT ``LoraConfig`` as a dict (``adapter_config.json`` / diffusers metadata); when
    given, modules without an ``alpha`` tensor get one from it. Raises :class:`LoraFormatError` when no key maps.
    """
    aliases = module_aliases(weight_shapes)
    tensors: dict[str, torch.Tensor] = {}
    key_map: dict[str, object] = {}
    module_of_stem: dict[str, str] = {}
    unmapped: list[str] = []
    families: set[str] = set()
    for key, tensor in state.items():
        split = split_adapter_key(key)
        resolved = None if split is None else _resolve_stem(split[0], aliases)
        if resolved is None:
            unmapped.append(key)
            continue
        stem, parameter = split
        module_of_stem[stem], key_map[stem] = resolved
        if _family(parameter):
            families.add(_family(parameter))
        if parameter == "lora_magnitude_vector":
            # PEFT's DoRA magnitude is one norm per output row; ComfyUI reads it as dora_scale of shape (out, 1).
            tensors[f"{stem}.dora_scale"] = tensor.reshape(-1, 1)
        else:
            tensors[key] = tensor
    if not key_map:
        raise LoraFormatError(
            f"no key names a weight of the Ideogram 4 transformer (keys such as {sorted(state)[:4]}). Understood: "
            f"{UNDERSTOOD_FORMATS}. Is this a LoRA for another model?")
    if adapter_config:
        _add_peft_alphas(tensors, module_of_stem, adapter_config)
    return LoraKeyMap(tensors=tensors, key_map=key_map, unmapped=sorted(unmapped), families=sorted(families))


def _add_peft_alphas(tensors: dict[str, torch.Tensor], module_of_stem: Mapping[str, str], config: Mapping) -> None:
    for stem, module in module_of_stem.items():
        down = tensors.get(f"{stem}.lora_A.weight", tensors.get(f"{stem}.lora_A.default.weight"))
        if down is None or f"{stem}.alpha" in tensors:
            continue
        rank = int(down.shape[0])
        tensors[f"{stem}.alpha"] = torch.tensor(peft_alpha(config, module, rank))


def _strip_config_prefix(config: Mapping) -> dict:
    """diffusers writes its metadata per component (``transformer.lora_alpha``); PEFT writes plain keys."""
    if any(key.startswith("transformer.") for key in config):
        return {key[len("transformer."):]: value for key, value in config.items() if key.startswith("transformer.")}
    return dict(config)


def read_lora_file(path: str | pathlib.Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A LoRA file's tensors and its PEFT adapter config (``adapter_config.json`` beside the file, else the
    diffusers ``lora_adapter_metadata`` in the file), or None when it has neither."""
    path = pathlib.Path(path)
    tensors, metadata = read_safetensors(path)
    config_path = path.parent / ADAPTER_CONFIG_NAME
    config_text, where = None, None
    if config_path.is_file():
        config_text, where = config_path.read_text(encoding="utf-8"), config_path
    elif DIFFUSERS_METADATA_KEY in metadata:
        config_text, where = metadata[DIFFUSERS_METADATA_KEY], f"{path} (metadata {DIFFUSERS_METADATA_KEY})"
    if config_text is None:
        return tensors, None
    try:
        config = json.loads(config_text)
    except ValueError as error:
        raise LoraFormatError(f"{where}: not valid JSON ({error}); fix or remove it (it gives the LoRA's alpha).") \
            from None
    if not isinstance(config, dict):
        raise LoraFormatError(f"{where}: expected a JSON object (a PEFT LoraConfig), found {type(config).__name__}.")
    return tensors, _strip_config_prefix(config)
