"""Loading an Ideogram 4 DiT checkpoint from any published file layout into official key names.

Layouts read (each as one file or sharded with a ``*.safetensors.index.json``; ``layout`` gets ``+sharded``):

=========================  ==========================================================================================
``official-bf16``          official keys (``attention.qkv``, ``attention.o``), unquantised; ``-fp16``/``-fp32`` likewise
``official-fp8-rowwise``   official keys, Linear weights float8_e4m3fn + ``<name>.weight_scale`` float32 ``(out,)``
                           (``ideogram-ai/ideogram-4-fp8``)
``comfy-fp8-scaled``       official keys, ComfyUI ``<layer>.comfy_quant`` + per-tensor ``weight_scale`` (optional
                           ``input_scale``) — the Comfy-Org ``*_fp8_scaled`` files; also ComfyUI's older
                           ``scaled_fp8`` marker / ``_quantization_metadata`` forms
``official-fp8-unscaled``  official keys, float8 weights without any scale (cast as ComfyUI does)
``diffusers``              ``to_q``/``to_k``/``to_v`` fused into ``qkv`` (rows q, k, v), ``to_out.0`` -> ``o``;
                           ``diffusers-fp8-rowwise`` etc. when quantised
=========================  ==========================================================================================

Keys may be bare or carry a ``model.diffusion_model.``, ``diffusion_model.`` or ``transformer.`` prefix, or any
other prefix in front of ``embed_image_indicator.weight`` (tensors outside the prefix, e.g. a VAE bundled in the
same file, are ignored).

Dimensions come from the file: a ``config`` JSON in the safetensors metadata, else a ``config.json`` beside it,
else the tensor shapes in the header (never tensor data). Every tensor is then checked against the shapes that
config implies.

Also read: ``official-nf4`` / ``diffusers-nf4`` (bitsandbytes nf4 ``<name>.weight`` uint8 with ``.weight.absmax``,
``.weight.quant_map`` and ``.weight.quant_state.bitsandbytes__nf4`` sidecars, ``ideogram-ai/ideogram-4-nf4``) and
GGUF files (``official-gguf-<types>``: official keys, any prefix; block weights in GGML types, the rest
F32/F16/BF16; read with the ``gguf`` package, :mod:`ideogram4.gguf_io`).

De-quantisation (``keep_quantized=False``, the default) follows :mod:`ideogram4.quantization`: the official
per-row rule for ``weight_scale`` of shape ``(out,)``, ComfyUI's per-tensor rule for ``comfy_quant`` layers,
:func:`ideogram4.gguf_dequant.dequantize_gguf` and :func:`ideogram4.nf4.dequantize_nf4`.

``keep_quantized=True`` keeps quantised Linear weights as stored and lists each in ``DiTCheckpoint.quantized``
(an :class:`ideogram4.quantization.QuantizedWeight`). GGUF Linears keep their block bytes (uint8 ``(rows, bytes)``),
nf4 ones their packed bytes with ``<name>.weight_absmax`` and ``<name>.weight_quant_map``; for fp8, every quantised
Linear ``<name>`` gets:

* ``<name>.weight``       float8 ``(out, in)`` exactly as stored (q, k, v rows concatenated for diffusers files);
* ``<name>.weight_scale`` float32 ``(out,)`` — always **per row**: per-tensor scales are broadcast to every row
  and unscaled fp8 gets ones. The weight in compute dtype ``dt`` is then, for every layout,
  ``weight.to(dt) * weight_scale.to(dt)[:, None]``, which is bit-identical to the default path;
* ``<name>.input_scale``  float32 scalar, only where a ComfyUI file carries one for that (unsplit) layer: the
  activation scale ComfyUI uses for fp8 matmuls. The weight-only official path ignores it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields

import torch

from .dit_config import DiTConfig
from .gguf_dequant import dequantize_gguf
from .gguf_io import GGUFSource, PLAIN_GGUF_TYPES, is_gguf_file, iter_gguf_tensors, open_gguf
from .nf4 import dequantize_nf4, parse_bnb_quant_state
from .quantization import (
    COMFY_FP8_FORMATS,
    QuantizedWeight,
    as_row_scale,
    fp8_scaling,
    dequantize_fp8_per_tensor,
    dequantize_fp8_rowwise,
    parse_comfy_quant,
)
from .weight_files import describe_model_kind
from .safetensors_io import (
    SAFETENSORS_DTYPES,
    CheckpointError,
    SafetensorsSource,
    find_config_json,
    iter_tensors,
    open_source,
)

__all__ = [
    "CheckpointError",
    "DiTCheckpoint",
    "DiTCheckpointInfo",
    "inspect_dit_checkpoint",
    "SUPPORTED_LAYOUTS",
    "expected_dit_shapes",
    "load_dit_checkpoint",
    "load_dit_pair",
    "check_dit_pair",
]

# Appended to each file error, which already says what was found and what to do: kept to one short sentence.
SUPPORTED_LAYOUTS = (
    "Supported: Ideogram 4 transformer .safetensors (official keys, bf16/fp8/nf4; Comfy-Org; diffusers layout), "
    "single or sharded, or GGUF."
)

# Prefixes under which a DiT state dict is found, most specific first; "" = bare keys.
DIT_KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "")
# The key every Ideogram 4 DiT has and no other model does (ComfyUI detects the model by it too).
MARKER_KEY = "embed_image_indicator.weight"
FP8_HEADER_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
# Sidecar tensors that describe a quantised weight rather than being model weights themselves.
_QUANT_SIDECARS = (".weight_scale", ".input_scale", ".comfy_quant", ".weight_scale_2", ".pre_quant_scale",
                   ".scale_weight", ".scale_input")
# bitsandbytes sidecars of an nf4 ``<layer>.weight``: ``.weight.absmax``, ``.weight.quant_map``,
# ``.weight.quant_state.bitsandbytes__nf4`` (double quantisation adds ``.weight.nested_*``, not read).
_BNB_SIDECARS = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")
_BNB_STATE = ".quant_state."
# ComfyUI quantisation formats the pack hands to ComfyUI's own quantised layers (comfy.quant_ops), with how a
# stored weight's columns relate to the layer's inputs (nvfp4 packs two 4-bit values per byte).
COMFY_NATIVE_FORMATS = {"int8_tensorwise": 1, "nvfp4": 2}
_COMFY_LAYER_SIDECARS = (".comfy_quant", ".weight_scale", ".weight_scale_2", ".input_scale", ".pre_quant_scale")
_DIFFUSERS_QKV = re.compile(r"^(layers\.\d+\.attention)\.to_([qkv])\.weight$")
_DIFFUSERS_OUT = re.compile(r"^(layers\.\d+\.attention)\.to_out\.0\.weight$")
_LAYER_INDEX = re.compile(r"^layers\.(\d+)\.")


@dataclass(frozen=True)
class DiTCheckpoint:
    """A loaded DiT: ``state_dict`` in official key names (ready for ``Ideogram4DiT.load_state_dict``).

    ``layout`` names the file layout (see module docstring); ``config_source`` says where the dimensions came
    from: ``"metadata"``, ``"config.json"`` or ``"shapes"``. ``quantized`` maps each Linear kept quantised
    (``keep_quantized=True``) to how its stored ``weight`` and sidecars rebuild the weight.
    """

    config: DiTConfig
    state_dict: dict[str, torch.Tensor]
    layout: str
    path: str
    config_source: str = ""
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)


def expected_dit_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for every stored tensor of an ``Ideogram4DiT`` with ``config`` (spec B.3), in
    module order. Linear weights are ``(out, in)``."""
    hidden, adaln = config.hidden_size, config.adaln_dim
    shapes: dict[str, tuple[int, ...]] = {
        "input_proj.weight": (hidden, config.in_channels),
        "input_proj.bias": (hidden,),
        "llm_cond_norm.weight": (config.llm_features_dim,),
        "llm_cond_proj.weight": (hidden, config.llm_features_dim),
        "llm_cond_proj.bias": (hidden,),
        "t_embedding.mlp_in.weight": (hidden, hidden),
        "t_embedding.mlp_in.bias": (hidden,),
        "t_embedding.mlp_out.weight": (hidden, hidden),
        "t_embedding.mlp_out.bias": (hidden,),
        "adaln_proj.weight": (adaln, hidden),
        "adaln_proj.bias": (adaln,),
        "embed_image_indicator.weight": (2, hidden),
    }
    for i in range(config.num_layers):
        block = f"layers.{i}."
        shapes.update({
            block + "attention.qkv.weight": (3 * hidden, hidden),
            block + "attention.norm_q.weight": (config.attention_head_dim,),
            block + "attention.norm_k.weight": (config.attention_head_dim,),
            block + "attention.o.weight": (hidden, hidden),
            block + "feed_forward.w1.weight": (config.intermediate_size, hidden),
            block + "feed_forward.w2.weight": (hidden, config.intermediate_size),
            block + "feed_forward.w3.weight": (config.intermediate_size, hidden),
            block + "attention_norm1.weight": (hidden,),
            block + "attention_norm2.weight": (hidden,),
            block + "ffn_norm1.weight": (hidden,),
            block + "ffn_norm2.weight": (hidden,),
            block + "adaln_modulation.weight": (4 * hidden, adaln),
            block + "adaln_modulation.bias": (4 * hidden,),
        })
    shapes.update({
        "final_layer.linear.weight": (config.in_channels, hidden),
        "final_layer.linear.bias": (config.in_channels,),
        "final_layer.adaln_modulation.weight": (hidden, adaln),
        "final_layer.adaln_modulation.bias": (hidden,),
    })
    return shapes


# --------------------------------------------------------------------------------------------------
# Plan: what the file holds, read from the header only (plus the tiny comfy_quant tensors)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Quant:
    """How one stored weight is quantised: ``kind`` is "rowwise", "per_tensor" or "unscaled" (fp8), "gguf" (GGML
    type ``qtype``) or "nf4" (bitsandbytes, sidecars ``absmax_key``/``quant_map_key``, ``blocksize``)."""

    kind: str
    scale_key: str | None = None
    input_scale_key: str | None = None
    qtype: int | None = None
    absmax_key: str | None = None
    quant_map_key: str | None = None
    blocksize: int = 64
    comfy_format: str | None = None  # the comfy_quant "format" of a ComfyUI-quantised layer
    comfy_keys: tuple[str, ...] = ()  # that layer's sidecars (comfy_quant, scales), passed on to ComfyUI's layer

    @property
    def extra_keys(self) -> tuple[str, ...]:
        """Sidecars read with the weight itself (large ones: nf4 absmax is 1/16 of the weight's bytes)."""
        if self.kind == "nf4":
            return (self.absmax_key, self.quant_map_key)
        return self.comfy_keys


@dataclass(frozen=True)
class _Part:
    """One stored tensor (full key in the file) contributing rows to an official tensor."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    quant: _Quant | None = None


@dataclass
class _Plan:
    source: SafetensorsSource
    file_label: str
    prefix: str
    entries: dict[str, tuple[_Part, ...]]  # official key -> parts (q, k, v for a diffusers qkv)
    layout: str
    config: DiTConfig | None = None
    config_source: str = ""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # True when a layer uses a ComfyUI quantisation the core does not de-quantise (int8, nvfp4): the file's
    # ComfyUI-quantised layers then all go to ComfyUI's own quantised layers (comfy.quant_ops).
    comfy_native: bool = False

    def error(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.file_label}: {what} {SUPPORTED_LAYOUTS}")


def _detect_prefix(keys: dict, label: str) -> str | None:
    """The key prefix of the DiT in ``keys``: a known one first, else whatever precedes the marker key."""
    for prefix in DIT_KEY_PREFIXES:
        if prefix + MARKER_KEY in keys:
            return prefix
    others = sorted(key[: -len(MARKER_KEY)] for key in keys if key.endswith("." + MARKER_KEY))
    if len(others) > 1:
        raise CheckpointError(
            f"{label}: the file holds several DiTs (key prefixes {', '.join(others)}); this loader reads one model "
            f"per file. {SUPPORTED_LAYOUTS}"
        )
    return others[0] if others else None


def _is_sidecar(key: str) -> bool:
    return key.endswith(_QUANT_SIDECARS) or key.endswith(_BNB_SIDECARS) or _BNB_STATE in key or key == "scaled_fp8"


def _read(source, keys):
    """``(key, tensor)`` one at a time from a safetensors or a GGUF source."""
    if isinstance(source, GGUFSource):
        return iter_gguf_tensors(source, keys)
    return iter_tensors(source, keys)


def _nf4_quant(plan_label: str, source, local: dict[str, str], name: str) -> tuple[_Quant, tuple[int, ...]]:
    """The nf4 quantisation of ``name`` (``<layer>.weight`` with bitsandbytes sidecars) and its logical shape."""
    nested = [key for key in (name + ".nested_absmax", name + ".nested_quant_map") if key in local]
    state_keys = [key for key in local if key.startswith(name + _BNB_STATE)]
    missing = [role for role, key in (("absmax", name + ".absmax"), ("quant_map", name + ".quant_map"))
               if key not in local]
    if missing or len(state_keys) != 1:
        raise CheckpointError(f"{plan_label}: the bitsandbytes weight {name!r} lacks its "
                              f"{', '.join(missing) or 'quant_state'} sidecar; the file is incomplete. "
                              f"{SUPPORTED_LAYOUTS}")
    if nested or not state_keys[0].endswith("bitsandbytes__nf4"):
        found = nested[0] if nested else state_keys[0]
        raise CheckpointError(
            f"{plan_label}: {name!r} is a bitsandbytes 4-bit weight the pack does not read (found {found!r}); only "
            "nf4 without double quantisation is read, as in the official ideogram-4-nf4 release. Use that release, "
            f"or the fp8 one. {SUPPORTED_LAYOUTS}")
    (_, blob), = _read(source, [local[state_keys[0]]])
    try:
        state = parse_bnb_quant_state(blob)
    except ValueError as error:
        raise CheckpointError(f"{plan_label}: {local[state_keys[0]]}: {error}. {SUPPORTED_LAYOUTS}") from None
    return (_Quant("nf4", absmax_key=local[name + ".absmax"], quant_map_key=local[name + ".quant_map"],
                   blocksize=state["blocksize"]), tuple(state["shape"]))


def _comfy_quant_configs(plan_label: str, source: SafetensorsSource, prefix: str, local: dict[str, str]
                         ) -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """ComfyUI quant configs by local layer name, plus the scale / input-scale key of each such layer.

    Reads the three forms ComfyUI accepts: ``<layer>.comfy_quant`` tensors, a ``_quantization_metadata`` JSON in
    the safetensors metadata, and the older ``scaled_fp8`` marker with ``.scale_weight`` / ``.scale_input``.
    """
    configs: dict[str, dict] = {}
    scale_keys: dict[str, str] = {}
    input_keys: dict[str, str] = {}

    quant_keys = [full for name, full in local.items() if name.endswith(".comfy_quant")]
    for full, tensor in iter_tensors(source, quant_keys):
        layer = full[len(prefix):-len(".comfy_quant")]
        configs[layer] = parse_comfy_quant(tensor, where=f"{plan_label}: {full}")

    metadata_json = source.metadata.get("_quantization_metadata")
    if metadata_json is not None:
        try:
            layers = json.loads(metadata_json)["layers"]
            for name, conf in layers.items():
                layer = name[len(prefix):] if name.startswith(prefix) else name
                configs.setdefault(layer, dict(conf))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"{plan_label}: the _quantization_metadata entry of the safetensors metadata is malformed ({error}); "
                'expected {"layers": {"<layer>": {"format": ...}}}.'
            ) from None

    if "scaled_fp8" in local:
        marker_dtype = source.entries[local["scaled_fp8"]][0]
        fmt = "float8_e5m2" if marker_dtype == "F8_E5M2" else "float8_e4m3fn"
        for name, full in local.items():
            if name.endswith(".scale_weight"):
                layer = name[: -len(".scale_weight")]
                configs.setdefault(layer, {"format": fmt})
                scale_keys[layer] = full
            elif name.endswith(".scale_input"):
                input_keys[name[: -len(".scale_input")]] = full

    for layer in configs:
        scale_keys.setdefault(layer, local.get(layer + ".weight_scale", ""))
        if layer + ".input_scale" in local:
            input_keys.setdefault(layer, local[layer + ".input_scale"])
    return configs, scale_keys, input_keys


def _quant_for(plan_label, source, local, name, dtype, shape, comfy, comfy_scales, comfy_inputs) -> _Quant | None:
    """The quantisation of the stored weight ``name`` (local key), or None when it is a plain tensor."""
    if isinstance(source, GGUFSource):
        return None if dtype in PLAIN_GGUF_TYPES else _Quant("gguf", qtype=source.qtypes[local[name]])
    layer = name[: -len(".weight")] if name.endswith(".weight") else None
    if layer is not None and layer in comfy:
        fmt = comfy[layer].get("format")
        storage = COMFY_FP8_FORMATS.get(fmt)
        comfy_keys = tuple(local[layer + suffix] for suffix in _COMFY_LAYER_SIDECARS if layer + suffix in local)
        if storage is None:
            if fmt not in COMFY_NATIVE_FORMATS:
                raise CheckpointError(
                    f"{plan_label}: layer {layer!r} uses ComfyUI quantisation format {fmt!r}, which this pack does not "
                    f"read (it reads float8_e4m3fn, float8_e5m2 and, through ComfyUI's own quantised layers, "
                    f"{', '.join(COMFY_NATIVE_FORMATS)}). Use ideogram4_fp8_scaled.safetensors or a GGUF file. "
                    f"{SUPPORTED_LAYOUTS}")
            return _Quant("comfy", comfy_format=fmt, comfy_keys=comfy_keys)
        scale_key = comfy_scales.get(layer) or None
        _scaling(plan_label, name, scale_key, source, dtype, shape, fmt)
        return _Quant("per_tensor", scale_key, comfy_inputs.get(layer), comfy_format=fmt, comfy_keys=comfy_keys)

    scale_key = local.get(layer + ".weight_scale") if layer is not None else None
    kind = _scaling(plan_label, name, scale_key, source, dtype, shape)
    return None if kind is None else _Quant(kind, scale_key if kind != "unscaled" else None)


def _scaling(plan_label, name, scale_key, source, dtype, shape, comfy_format=None) -> str | None:
    """:func:`ideogram4.quantization.fp8_scaling` from the header, its errors naming the file and the layouts."""
    try:
        return fp8_scaling(f"{plan_label}: {scale_key or name!r}", SAFETENSORS_DTYPES.get(dtype), shape,
                           source.entries[scale_key][1] if scale_key else None, comfy_format)
    except CheckpointError as error:
        raise CheckpointError(f"{error} {SUPPORTED_LAYOUTS}") from None


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _layout_name(is_diffusers: bool, parts: list[_Part], sharded: bool) -> str:
    kinds = {part.quant.kind for part in parts if part.quant is not None}
    gguf_types = sorted({part.dtype for part in parts if part.quant is not None and part.quant.kind == "gguf"})
    comfy_formats = sorted({part.quant.comfy_format for part in parts if part.quant is not None
                            and part.quant.kind == "comfy"})
    if comfy_formats:
        return "comfy-" + "+".join(comfy_formats) + ("+sharded" if sharded else "")
    if gguf_types:
        return ("diffusers" if is_diffusers else "official") + "-gguf-" + "+".join(gguf_types)
    if "nf4" in kinds:
        return ("diffusers" if is_diffusers else "official") + "-nf4" + ("+sharded" if sharded else "")
    if "per_tensor" in kinds:
        quant = "fp8-scaled"
    elif "rowwise" in kinds:
        quant = "fp8-rowwise"
    elif "unscaled" in kinds:
        quant = "fp8-unscaled"
    else:
        quant = None
    if is_diffusers:
        name = "diffusers" if quant is None else f"diffusers-{quant}"
    elif quant == "fp8-scaled":
        name = "comfy-fp8-scaled"
    elif quant is not None:
        name = f"official-{quant}"
    else:
        weight_dtypes = {part.dtype for part in parts
                         if part.key.endswith(".weight") and len(part.shape) == 2 and not part.key.endswith(MARKER_KEY)}
        short = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64"}
        name = "official-" + "-".join(sorted(short.get(dtype, dtype.lower()) for dtype in weight_dtypes))
    return name + ("+sharded" if sharded else "")


def _plan_dit(path) -> _Plan:
    """Everything about a DiT file except its tensor data: layout, key mapping, config, validated shapes."""
    try:
        source = open_gguf(path) if is_gguf_file(path) else open_source(path)
    except CheckpointError as error:
        raise CheckpointError(f"{error} {SUPPORTED_LAYOUTS}") from None
    label = str(source.path)
    keys = source.entries
    prefix = _detect_prefix(keys, label)
    if prefix is None:
        raise CheckpointError(
            f"{label}: this is not an Ideogram 4 DiT checkpoint: it looks like "
            f"{describe_model_kind(keys, getattr(source, 'architecture', None))}. {SUPPORTED_LAYOUTS}"
        )
    local = {key[len(prefix):]: key for key in keys if key.startswith(prefix)}

    orphans = [name for name in local if name.endswith((".weight_scale", ".comfy_quant", ".input_scale"))
               and name.rsplit(".", 1)[0] + ".weight" not in local]
    if orphans:
        raise CheckpointError(
            f"{label}: quantisation entries without their weight, e.g. {', '.join(orphans[:3])}; the file is "
            f"incomplete or damaged. {SUPPORTED_LAYOUTS}"
        )
    comfy, comfy_scales, comfy_inputs = _comfy_quant_configs(label, source, prefix, local)
    is_diffusers = any(_DIFFUSERS_QKV.match(name) for name in local)

    bnb_weights = ({name.split(_BNB_STATE)[0] for name in local if _BNB_STATE in name}
                   | {name[: -len(suffix)] for name in local for suffix in _BNB_SIDECARS if name.endswith(suffix)})
    entries: dict[str, list[_Part]] = {}
    qkv_parts: dict[str, dict[str, _Part]] = {}
    for name, full in local.items():
        if _is_sidecar(name):
            continue
        dtype, shape = keys[full]
        if name in bnb_weights:
            quant, shape = _nf4_quant(label, source, local, name)
        else:
            quant = _quant_for(label, source, local, name, dtype, tuple(shape), comfy, comfy_scales, comfy_inputs)
            if quant is not None and quant.kind == "comfy":
                shape = (*shape[:-1], shape[-1] * COMFY_NATIVE_FORMATS[quant.comfy_format])
        part = _Part(full, dtype, tuple(shape), quant)
        qkv = _DIFFUSERS_QKV.match(name)
        out = _DIFFUSERS_OUT.match(name)
        if qkv:
            qkv_parts.setdefault(qkv.group(1) + ".qkv.weight", {})[qkv.group(2)] = part
        elif out:
            entries[out.group(1) + ".o.weight"] = [part]
        else:
            entries[name] = [part]
    for official, by_letter in qkv_parts.items():
        missing = [f"to_{letter}" for letter in "qkv" if letter not in by_letter]
        if missing:
            raise CheckpointError(
                f"{label}: {official.replace('.qkv.weight', '')} has {', '.join('to_' + k for k in sorted(by_letter))} "
                f"but not {', '.join(missing)}; the q, k and v projections are needed together. {SUPPORTED_LAYOUTS}"
            )
        entries[official] = [by_letter["q"], by_letter["k"], by_letter["v"]]

    all_parts = [part for parts in entries.values() for part in parts]
    plan = _Plan(
        source=source,
        file_label=label,
        prefix=prefix,
        entries={key: tuple(parts) for key, parts in entries.items()},
        layout=_layout_name(is_diffusers, all_parts, source.sharded),
        comfy_native=any(part.quant is not None and part.quant.kind == "comfy" for part in all_parts),
    )
    plan.shapes = {key: _logical_shape(plan, key) for key in plan.entries}
    plan.config, plan.config_source = _resolve_config(plan)
    _validate_shapes(plan)
    return plan


def _logical_shape(plan: _Plan, key: str) -> tuple[int, ...]:
    parts = plan.entries[key]
    if len(parts) == 1:
        return parts[0].shape
    widths = {part.shape[1:] for part in parts}
    if len(widths) != 1 or any(len(part.shape) != 2 for part in parts):
        found = ", ".join(f"{part.key} {list(part.shape)}" for part in parts)
        raise plan.error(f"shape mismatch: the q/k/v projections fused into {key!r} differ in shape ({found}).")
    return (sum(part.shape[0] for part in parts), *parts[0].shape[1:])


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

_CONFIG_JSON_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "intermediate_size", "adaln_dim",
                     "in_channels", "llm_features_dim")
# Keys only an Ideogram 4 DiT config has (a VAE or text-encoder config.json shares e.g. in_channels).
_DIT_ONLY_CONFIG_KEYS = ("llm_features_dim", "adaln_dim", "adanln_dim")


def _describes_dit(config: dict) -> bool:
    class_name = config.get("_class_name")
    if class_name is not None:
        return "Ideogram4" in str(class_name)
    return any(key in config for key in _DIT_ONLY_CONFIG_KEYS)


def _resolve_config(plan: _Plan) -> tuple[DiTConfig, str]:
    metadata_config = plan.source.metadata.get("config")
    if metadata_config is not None:
        try:
            data = json.loads(metadata_config)
            if not isinstance(data, dict):
                raise ValueError(f"found {type(data).__name__}, expected a JSON object")
            return DiTConfig.from_official_json(data), "metadata"
        except (ValueError, TypeError) as error:
            raise plan.error(f"the 'config' entry of the safetensors metadata is not a valid DiT config ({error}).") \
                from None
    config_json = find_config_json(plan.source.index or plan.source.files[0])
    # A config.json beside the weights counts only if it describes a DiT (a shared folder may hold others).
    if config_json is not None and _describes_dit(config_json):
        try:
            return DiTConfig.from_official_json(config_json), "config.json"
        except (ValueError, TypeError) as error:
            raise plan.error(f"the config.json beside it is not a valid DiT config ({error}).") from None
    return _config_from_shapes(plan), "shapes"


def _config_from_shapes(plan: _Plan) -> DiTConfig:
    """Dimensions read off the header shapes; what shapes cannot tell keeps the official defaults."""
    shapes = plan.shapes

    def dim(key: str, axis: int) -> int:
        if key not in shapes:
            raise plan.error(f"cannot infer the model dimensions: tensor {key!r} is missing.")
        return shapes[key][axis]

    head_dim = dim("layers.0.attention.norm_q.weight", 0)
    hidden = dim("input_proj.weight", 0)
    if head_dim <= 0 or hidden % head_dim:
        raise plan.error(
            f"shape mismatch: hidden size {hidden} (input_proj.weight) is not a multiple of the head dim {head_dim} "
            "(layers.0.attention.norm_q.weight)."
        )
    layer_indices = {int(match.group(1)) for key in shapes if (match := _LAYER_INDEX.match(key))}
    # The released head (256 wide, 128 frequency pairs) uses h/w sections of 20 pairs; a smaller head cannot hold
    # them (the interleave writes pairs up to 3 * section - 1), so they shrink to what fits and t keeps the
    # released 24:20 ratio — head_dim 64 gives (12, 10, 10), as the pack's tiny test models use. A guess for
    # such heads: ship a config (metadata or config.json) with models that are not the released size.
    default_t, default_h, _ = DiTConfig.mrope_section
    fitting = min(default_h, (head_dim // 2) // 3)
    mrope_section = DiTConfig.mrope_section if fitting == default_h else (default_t * fitting // default_h,
                                                                          fitting, fitting)
    return DiTConfig(
        mrope_section=mrope_section,
        num_layers=max(layer_indices) + 1,
        num_attention_heads=hidden // head_dim,
        attention_head_dim=head_dim,
        intermediate_size=dim("layers.0.feed_forward.w1.weight", 0),
        adaln_dim=dim("adaln_proj.weight", 0),
        in_channels=dim("input_proj.weight", 1),
        llm_features_dim=dim("llm_cond_norm.weight", 0),
    )


def _validate_shapes(plan: _Plan) -> None:
    expected = expected_dit_shapes(plan.config)
    source_note = {"metadata": "the safetensors metadata 'config'", "config.json": "the config.json beside the file",
                   "shapes": "the tensor shapes"}[plan.config_source]
    for key, shape in expected.items():
        found = plan.shapes.get(key)
        if found is not None and tuple(found) != shape:
            stored = ", ".join(part.key for part in plan.entries[key])
            raise plan.error(
                f"shape mismatch for {key!r} (stored as {stored}): expected {list(shape)} for the config read from "
                f"{source_note} ({_config_summary(plan.config)}), found {list(found)}."
            )
    missing = [key for key in expected if key not in plan.shapes]
    if missing:
        raise plan.error(
            f"{len(missing)} tensor(s) missing for the config read from {source_note} "
            f"({_config_summary(plan.config)}), "
            f"e.g. {', '.join(missing[:4])}. The file is incomplete or a different model."
        )
    unexpected = [key for key in plan.shapes if key not in expected]
    if unexpected:
        raise plan.error(
            f"{len(unexpected)} unexpected tensor(s) for an Ideogram 4 DiT, e.g. {', '.join(unexpected[:4])}."
        )


def _config_summary(config: DiTConfig) -> str:
    return ", ".join(f"{item.name}={getattr(config, item.name)}" for item in fields(config)
                     if item.name in _CONFIG_JSON_KEYS)


# --------------------------------------------------------------------------------------------------
# Materialisation
# --------------------------------------------------------------------------------------------------


def _materialise(plan: _Plan, dtype: torch.dtype | None, keep_quantized: bool
                 ) -> tuple[dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    """Read the tensors of ``plan`` one at a time and convert each as documented in the module docstring."""
    dequant_dtype = dtype if dtype is not None else torch.bfloat16
    order = list(expected_dit_shapes(plan.config))
    scale_keys = sorted({key for parts in plan.entries.values() for part in parts if part.quant is not None
                         for key in (part.quant.scale_key, part.quant.input_scale_key) if key})
    scales = dict(_read(plan.source, scale_keys))

    state_dict: dict[str, torch.Tensor] = {}
    quantized: dict[str, QuantizedWeight] = {}
    stored = _read(plan.source, [key for name in order for part in plan.entries[name]
                                 for key in (part.key, *(part.quant.extra_keys if part.quant else ()))])
    for key in order:
        parts = plan.entries[key]
        tensors, extras = [], []
        for part in parts:
            tensor = next(stored)[1]
            if part.quant is not None and part.quant.comfy_format in COMFY_FP8_FORMATS and tensor.dtype == torch.uint8:
                tensor = tensor.view(COMFY_FP8_FORMATS[part.quant.comfy_format])  # older ComfyUI files: fp8 as bytes
            tensors.append(tensor)
            extras.append({extra: next(stored)[1] for extra in (part.quant.extra_keys if part.quant else ())})
        kinds = {part.quant.kind if part.quant else None for part in parts}
        layer = key[: -len(".weight")]
        if plan.comfy_native and any(part.quant is not None and part.quant.comfy_format for part in parts):
            _pass_to_comfy(plan, key, parts, tensors, extras, keep_quantized, state_dict, quantized)
            continue
        if keep_quantized and _is_linear_weight(key) and len({t.dtype for t in tensors}) == 1:
            if kinds <= {"rowwise", "per_tensor", "unscaled"}:
                state_dict[key] = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
                row_scales = [_row_scale(part, tensor, scales) for part, tensor in zip(parts, tensors)]
                state_dict[layer + ".weight_scale"] = torch.cat(row_scales) if len(row_scales) > 1 else row_scales[0]
                if len(parts) == 1 and parts[0].quant.input_scale_key:
                    state_dict[layer + ".input_scale"] = scales[parts[0].quant.input_scale_key].reshape(()).float()
                quantized[layer] = QuantizedWeight("fp8_rowwise", plan.shapes[key])
                continue
            if kinds == {"gguf"} and len({part.quant.qtype for part in parts}) == 1:
                # GGML blocks run along rows, so q, k and v rows concatenate as bytes.
                state_dict[key] = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
                quantized[layer] = QuantizedWeight("gguf", plan.shapes[key], qtype=parts[0].quant.qtype)
                continue
            if kinds == {"nf4"} and _nf4_concatenates(parts):
                state_dict[key] = torch.cat([t.reshape(-1) for t in tensors])
                state_dict[layer + ".weight_absmax"] = torch.cat([e[p.quant.absmax_key].reshape(-1).float()
                                                                  for p, e in zip(parts, extras)])
                state_dict[layer + ".weight_quant_map"] = extras[0][parts[0].quant.quant_map_key].reshape(16).float()
                quantized[layer] = QuantizedWeight("nf4", plan.shapes[key], blocksize=parts[0].quant.blocksize)
                continue
        converted = [
            _dequantise(part, tensor, scales, extra, dequant_dtype) if part.quant is not None else _cast(tensor, dtype)
            for part, tensor, extra in zip(parts, tensors, extras)
        ]
        state_dict[key] = torch.cat(converted) if len(converted) > 1 else converted[0]
    return state_dict, quantized


def _pass_to_comfy(plan: _Plan, key: str, parts, tensors, extras, keep_quantized: bool, state_dict: dict,
                   quantized: dict) -> None:
    """A ComfyUI-quantised layer of a file ComfyUI's quantised layers must read: its weight and sidecars as stored,
    under the layer's official name."""
    fmt = parts[0].quant.comfy_format
    if not keep_quantized or len(parts) != 1:
        raise plan.error(f"layer {key[: -len('.weight')]!r} is stored in ComfyUI's {fmt!r} format, which only "
                         "ComfyUI's own quantised layers de-quantise: load this file with weight_dtype default (the "
                         "weights stay as stored), or use ideogram4_fp8_scaled.safetensors.")
    layer = key[: -len(".weight")]
    state_dict[key] = tensors[0]
    for full, tensor in extras[0].items():
        state_dict[layer + full[full.rindex("."):]] = tensor
    quantized[layer] = QuantizedWeight("comfy", plan.shapes[key], comfy_format=fmt)


def _nf4_concatenates(parts) -> bool:
    """nf4 parts (q, k, v) join as bytes when they share the block size and each is whole blocks (the released
    widths are); otherwise they are de-quantised."""
    blocksize = parts[0].quant.blocksize
    return all(part.quant.blocksize == blocksize and _numel(part.shape) % (2 * blocksize) == 0 for part in parts)


def _is_linear_weight(key: str) -> bool:
    """Official Linear weights: the only tensors the official fp8 release quantises (with ``(out,)`` scales)."""
    return key.endswith(".weight") and key != MARKER_KEY and "norm" not in key


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def _dequantise(part: _Part, tensor: torch.Tensor, scales: dict, extras: dict, dtype: torch.dtype) -> torch.Tensor:
    quant = part.quant
    if quant.kind == "gguf":
        return dequantize_gguf(tensor, quant.qtype, part.shape, dtype)
    if quant.kind == "nf4":
        return dequantize_nf4(tensor, extras[quant.absmax_key], part.shape, dtype, blocksize=quant.blocksize,
                              quant_map=extras[quant.quant_map_key])
    if quant.kind == "rowwise":
        return dequantize_fp8_rowwise(tensor, scales[quant.scale_key].reshape(-1), dtype)
    if quant.kind == "per_tensor":
        return dequantize_fp8_per_tensor(tensor, scales[quant.scale_key], dtype)
    return tensor.to(dtype)  # unscaled fp8: ComfyUI casts it as is


def _row_scale(part: _Part, tensor: torch.Tensor, scales: dict) -> torch.Tensor:
    quant = part.quant
    rows = tensor.shape[0]
    if quant.kind in ("rowwise", "per_tensor"):
        return as_row_scale(scales[quant.scale_key], rows)
    return torch.ones(rows, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _check_dtype(dtype) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
                              or dtype in FP8_HEADER_DTYPES.values()):
        raise ValueError(f"dtype must be a floating torch dtype such as torch.bfloat16 (or None), got {dtype!r}")


@dataclass(frozen=True)
class DiTCheckpointInfo:
    """What :func:`inspect_dit_checkpoint` learns from the headers: official key -> shape, config, layout."""

    config: DiTConfig
    shapes: dict[str, tuple[int, ...]]
    layout: str
    path: str
    config_source: str
    metadata: dict[str, str] = field(default_factory=dict)  # the safetensors header's string metadata


def inspect_dit_checkpoint(path) -> DiTCheckpointInfo:
    """Layout, config and shapes of a DiT checkpoint, validated, without reading weights.

    Only the headers are read (plus the few-byte ``comfy_quant`` tensors of ComfyUI files). Raises CheckpointError
    exactly as :func:`load_dit_checkpoint` would for a bad file.
    """
    return _info(_plan_dit(path))


def _info(plan: _Plan) -> DiTCheckpointInfo:
    return DiTCheckpointInfo(plan.config, dict(plan.shapes), plan.layout, str(plan.source.path), plan.config_source,
                             dict(plan.source.metadata))


def load_dit_checkpoint(path, dtype: torch.dtype | None = torch.bfloat16, keep_quantized: bool = False) -> DiTCheckpoint:
    """Load an Ideogram 4 DiT from ``path`` (file, shard, index or folder) into official key names.

    dtype: target of non-quantised floating tensors and of de-quantised fp8 weights; None keeps the file's
    dtypes (fp8 weights are then de-quantised to bf16, the official compute dtype).
    keep_quantized: keep quantised Linear weights quantised (fp8, GGUF blocks, nf4; see the module docstring).
    Raises CheckpointError (file named, what was found, the supported layouts).
    """
    _check_dtype(dtype)
    plan = _plan_dit(path)
    return _to_checkpoint(plan, dtype, keep_quantized)


def _to_checkpoint(plan: _Plan, dtype, keep_quantized: bool) -> DiTCheckpoint:
    state_dict, quantized = _materialise(plan, dtype, keep_quantized)
    return DiTCheckpoint(
        config=plan.config,
        state_dict=state_dict,
        quantized=quantized,
        layout=plan.layout,
        path=str(plan.source.path),
        config_source=plan.config_source,
    )


def load_dit_pair(cond_path, uncond_path, dtype: torch.dtype | None = torch.bfloat16, keep_quantized: bool = False
                  ) -> tuple[DiTCheckpoint, DiTCheckpoint]:
    """Load the conditional and unconditional DiTs, refusing a pair that :func:`check_dit_pair` refuses.

    Both headers are checked before any tensor data is read.
    """
    _check_dtype(dtype)
    cond, uncond = _plan_pair(cond_path, uncond_path)
    return _to_checkpoint(cond, dtype, keep_quantized), _to_checkpoint(uncond, dtype, keep_quantized)


def check_dit_pair(cond_path, uncond_path) -> tuple[DiTCheckpointInfo, DiTCheckpointInfo]:
    """Headers of the conditional and unconditional DiTs, refusing (CheckpointError) the same file for both and a
    pair that does not share one config and shape set. Reads no tensor data, so a caller can check the pair
    before loading either model."""
    return tuple(_info(plan) for plan in _plan_pair(cond_path, uncond_path))


def _plan_pair(cond_path, uncond_path) -> tuple[_Plan, _Plan]:
    cond, uncond = _plan_dit(cond_path), _plan_dit(uncond_path)
    if [f.resolve() for f in cond.source.files] == [f.resolve() for f in uncond.source.files]:
        raise CheckpointError(
            f"the conditional and the unconditional model are the same file ({cond.file_label}). Ideogram 4 needs "
            "both transformers: pick the unconditional one (e.g. ideogram4_unconditional_fp8_scaled) as the "
            "unconditional model."
        )
    difference = _first_difference(cond, uncond)
    if difference is not None:
        raise CheckpointError(
            f"the conditional model {cond.file_label} and the unconditional model {uncond.file_label} do not match: "
            f"{difference}. Both Ideogram 4 transformers must have the same architecture; pick the matching pair "
            "(e.g. ideogram4_fp8_scaled + ideogram4_unconditional_fp8_scaled)."
        )
    return cond, uncond


def _first_difference(a: _Plan, b: _Plan) -> str | None:
    order_a, order_b = expected_dit_shapes(a.config), expected_dit_shapes(b.config)  # = the validated shapes
    for key in list(order_a) + [key for key in order_b if key not in order_a]:
        shape_a, shape_b = a.shapes.get(key), b.shapes.get(key)
        if shape_a != shape_b:
            describe = lambda shape: "absent" if shape is None else str(list(shape))  # noqa: E731
            return f"first differing tensor {key!r}: {describe(shape_a)} vs {describe(shape_b)}"
    if a.config != b.config:
        field_name = next(item.name for item in fields(a.config)
                          if getattr(a.config, item.name) != getattr(b.config, item.name))
        return (f"config field {field_name!r} differs: {getattr(a.config, field_name)!r} vs "
                f"{getattr(b.config, field_name)!r}")
    return None
