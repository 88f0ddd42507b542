"""Loading the Qwen3-VL text encoder from the file layouts it is published in.

Accepted (all through :func:`load_text_encoder`):

* a Hugging Face ``text_encoder/`` folder (``config.json`` + one or sharded safetensors), keys
  ``model.language_model.*`` (``Qwen3VLForConditionalGeneration``) or ``language_model.*`` (``Qwen3VLModel``),
  bf16/fp32; the repository root holding ``text_encoder/`` works too;
* the official ``ideogram-ai/ideogram-4-fp8`` ``text_encoder/`` (``"ideogram_fp8_weight_only": true``): Linear
  weights float8_e4m3fn ``(out, in)`` + ``<name>.weight_scale`` float32 ``(out,)``, de-quantised once at load
  exactly like the official ``Fp8Linear`` (:func:`ideogram4.quantization.dequantize_fp8_rowwise`), or kept in fp8
  for per-call de-quantisation (``keep_quantized_with``, as the ComfyUI nodes load it);
* ComfyUI single files such as Comfy-Org's ``qwen3vl_8b_fp8_scaled.safetensors``: any key prefix in front of
  ``embed_tokens``/``layers.N`` (``model.language_model.``, ``model.``, ...), ``<layer>.comfy_quant`` +
  per-tensor ``<layer>.weight_scale`` (or the older ``.scale_weight``) fp8, unscaled fp8 taken as is;
* the official ``ideogram-4-nf4`` ``text_encoder/`` (bitsandbytes nf4 Linear weights with ``.weight.absmax``,
  ``.weight.quant_map`` and ``.weight.quant_state.bitsandbytes__nf4`` sidecars);
* GGUF files of the Qwen3-VL-8B language model in llama.cpp naming (``general.architecture`` ``qwen3vl``;
  ``token_embd``, ``blk.N.attn_q/k/v/output``, ``attn_q_norm``/``attn_k_norm``, ``attn_norm``, ``ffn_norm``,
  ``blk.N.ffn_gate/up/down``), read with the ``gguf`` package (:mod:`ideogram4.gguf_io`).

fp8, nf4 and GGUF Linear weights are de-quantised once at load, or kept quantised for per-call de-quantisation
(``keep_quantized_with``, as the ComfyUI nodes load them); a quantised GGUF ``token_embd`` is de-quantised once.

Only ``embed_tokens`` and decoder layers 0..35 are ever read: the vision tower, the final norm and the LM head
stay on disk (shards that hold nothing else are not even opened). Dimensions come from ``config.json``
(``text_config``) when one is present, else from the tensor shapes (layers by counting, head dim from
``q_norm``, heads from the projection shapes; RoPE theta 5e6 and RMSNorm eps 1e-6), so a tiny test model loads
through the same code. Files that are not a Qwen3-VL language model raise
:class:`~ideogram4.safetensors_io.CheckpointError` saying what they look like.

A plain Qwen3 (non-VL) 8B file has the same key names and shapes; only a ``config.json`` beside it can tell
the two apart, so such a single file without config loads (and gives wrong features).
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .gguf_dequant import dequantize_gguf
from .gguf_io import GGUF_BLOCK_TYPES, GGUFSource, is_gguf_file, iter_gguf_tensors, open_gguf
from .nf4 import dequantize_nf4, parse_bnb_quant_state
from .quantization import (
    COMFY_FP8_FORMATS,
    FP8_DTYPES,
    QuantizedWeight,
    as_row_scale,
    fp8_scaling,
    parse_comfy_quant,
)
from .safetensors_io import (
    SAFETENSORS_DTYPES,
    CheckpointError,
    find_config_json,
    iter_tensors,
    open_source,
)
from .text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder, encode_prompts, num_layers_to_build
from .tokens import find_tokenizer_dir, load_tokenizer
from .weight_files import describe_model_kind
from .dit_checkpoint import COMFY_NATIVE_FORMATS

# The key that identifies a Qwen3 decoder (per-head q norm) and, by what precedes it, the language model prefix.
_Q_NORM_SUFFIX = "layers.0.self_attn.q_norm.weight"
_LAYER_KEY = re.compile(r"layers\.(\d+)\.")
QWEN3_VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_text")
HF_TEXT_ENCODER_SUBFOLDER = "text_encoder"

SUPPORTED_LAYOUTS = (
    "Supported: a Hugging Face Qwen3-VL text_encoder/ folder (bf16/fp32, single or sharded), the official "
    "ideogram-4-fp8 or ideogram-4-nf4 text_encoder/ folder, a ComfyUI single file such as "
    "qwen3vl_8b_fp8_scaled.safetensors, or a Qwen3-VL-8B GGUF in llama.cpp naming."
)
# Hugging Face module names of a Qwen3 decoder layer -> llama.cpp's tensor names (``blk.N.<name>``).
LLAMA_CPP_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
LLAMA_CPP_GLOBAL_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm"}
_FROM_LLAMA_CPP = {value: key for key, value in LLAMA_CPP_LAYER_NAMES.items()}
_LLAMA_CPP_KEY = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
# general.architecture of llama.cpp's Qwen3-VL language model; a plain Qwen3 has other weights.
GGUF_TEXT_ENCODER_ARCHITECTURES = ("qwen3vl",)
_BNB_STATE_SUFFIX = ".quant_state.bitsandbytes__nf4"


def hf_name_from_llama_cpp(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``layers.3.self_attn.q_proj.weight``, ``token_embd.weight`` ->
    ``embed_tokens.weight``; the LM head (``output.weight``) -> None (never read); other names unchanged."""
    if name == "output.weight":
        return None
    match = _LLAMA_CPP_KEY.match(name)
    if match is not None and match.group(2) in _FROM_LLAMA_CPP:
        return f"layers.{match.group(1)}.{_FROM_LLAMA_CPP[match.group(2)]}.{match.group(3)}"
    stem, _, param = name.rpartition(".")
    for hf, llama in LLAMA_CPP_GLOBAL_NAMES.items():
        if stem == llama:
            return f"{hf}.{param}"
    return name


@dataclass(frozen=True)
class TextEncoderLayout:
    """What :func:`inspect_text_encoder_checkpoint` found, from headers and config.json only.

    prefix: what precedes ``embed_tokens``/``layers.N`` in the keys; num_file_layers: decoder layers in the
    file; quantization: "none", "fp8_rowwise" (official), "fp8_per_tensor" (ComfyUI), "fp8_unscaled", "nf4" or
    "gguf".
    """

    path: pathlib.Path
    prefix: str
    config: Qwen3VLTextConfig
    config_source: str
    num_file_layers: int
    quantization: str


@dataclass
class LoadedTextEncoder:
    """A loaded encoder with its tokenizer. ``encode(prompts)`` -> ((B, L, hidden*13) float32, lengths);
    ``image_slots`` as in :func:`ideogram4.text_encoder.encode_prompts` (0 = text alone)."""

    encoder: Qwen3VLTextEncoder
    tokenizer: object
    layout: TextEncoderLayout
    tokenizer_dir: pathlib.Path

    def encode(self, prompts: list[str], device=None, image_slots: int = 0) -> tuple[torch.Tensor, list[int]]:
        return encode_prompts(self.encoder, self.tokenizer, prompts, device=device, image_slots=image_slots)


# ----------------------------------------------------------------------------------------------------------------
# Layout detection (headers only)
# ----------------------------------------------------------------------------------------------------------------


def _resolve_weights_path(path: pathlib.Path) -> pathlib.Path:
    """A repository root that holds ``text_encoder/`` stands for that folder."""
    subfolder = path / HF_TEXT_ENCODER_SUBFOLDER
    if path.is_dir() and subfolder.is_dir() and not any(path.glob("*.safetensors")):
        return subfolder
    return path


def _find_text_prefix(keys: list[str], label: str, architecture: str | None = None) -> str:
    candidates = sorted(
        key[: -len(_Q_NORM_SUFFIX)]
        for key in keys
        if key.endswith(_Q_NORM_SUFFIX) and "visual" not in key and "vision" not in key
    )
    key_set = set(keys)
    with_embedding = [prefix for prefix in candidates if prefix + "embed_tokens.weight" in key_set]
    if len(with_embedding) == 1:
        return with_embedding[0]
    if len(with_embedding) > 1:
        raise CheckpointError(
            f"{label}: holds several Qwen3 language models (key prefixes {with_embedding}); expected one. "
            + SUPPORTED_LAYOUTS
        )
    if candidates:
        raise CheckpointError(
            f"{label}: has Qwen3 decoder layers under '{candidates[0]}layers.' but no "
            f"'{candidates[0]}embed_tokens.weight'; the file is incomplete. Re-download it. " + SUPPORTED_LAYOUTS
        )
    raise CheckpointError(
        f"{label}: this is not a Qwen3-VL text encoder: it looks like {describe_model_kind(keys, architecture)}. "
        + SUPPORTED_LAYOUTS
    )


def _check_config_model_type(config: dict, label: str) -> None:
    model_type = config.get("model_type")
    if model_type is None or model_type in QWEN3_VL_MODEL_TYPES:
        return
    raise CheckpointError(
        f"{label}: its config.json says model_type {model_type!r}, but Ideogram 4 needs the language model of "
        f"Qwen3-VL-8B-Instruct (model_type one of {QWEN3_VL_MODEL_TYPES}); a plain Qwen3 or other LLM has different "
        "weights. Use the text_encoder of the Ideogram 4 release or Comfy-Org's qwen3vl_8b_fp8_scaled.safetensors."
    )


def _config_from_shapes(shapes: dict[str, list[int]], prefix: str, num_file_layers: int) -> Qwen3VLTextConfig:
    def shape(name: str) -> list[int]:
        return shapes[prefix + name]

    vocab_size, hidden_size = shape("embed_tokens.weight")
    (head_dim,) = shape("layers.0.self_attn.q_norm.weight")
    return Qwen3VLTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=shape("layers.0.mlp.gate_proj.weight")[0],
        num_hidden_layers=num_file_layers,
        num_attention_heads=shape("layers.0.self_attn.q_proj.weight")[0] // head_dim,
        num_key_value_heads=shape("layers.0.self_attn.k_proj.weight")[0] // head_dim,
        head_dim=head_dim,
    )


def _open(path: pathlib.Path):
    return open_gguf(path, rename=hf_name_from_llama_cpp) if is_gguf_file(path) else open_source(path)


def _read(source, keys):
    return iter_gguf_tensors(source, keys) if isinstance(source, GGUFSource) else iter_tensors(source, keys)


def _check_gguf_architecture(source, label: str) -> None:
    if not isinstance(source, GGUFSource) or source.architecture in GGUF_TEXT_ENCODER_ARCHITECTURES:
        return
    raise CheckpointError(
        f"{label}: a GGUF language model of architecture {source.architecture!r}, but Ideogram 4 needs the language "
        f"model of Qwen3-VL-8B-Instruct (GGUF architecture {GGUF_TEXT_ENCODER_ARCHITECTURES[0]!r}); other models "
        "have other weights. Use a Qwen3-VL-8B-Instruct GGUF or qwen3vl_8b_fp8_scaled.safetensors. " + SUPPORTED_LAYOUTS)


def _comfy_native_layers(source) -> dict[str, str]:
    """``<layer>.`` -> format, for the layers stored in a ComfyUI format only ComfyUI's own quantised layers read
    (Comfy-Org qwen3vl_8b_nvfp4)."""
    if isinstance(source, GGUFSource):
        return {}
    keys = [key for key in source.entries if key.endswith(".comfy_quant")]
    found = {}
    for key, tensor in (_read(source, keys) if keys else ()):
        quant_format = parse_comfy_quant(tensor, where=f"{source.path}: {key}")["format"]
        if quant_format in COMFY_NATIVE_FORMATS:
            found[key[: -len("comfy_quant")]] = quant_format
    return found


def _logical_shapes(source) -> dict[str, list[int]]:
    """Every tensor's shape as the model sees it: nf4 weights take theirs from the bitsandbytes quant state (stored,
    they are a column of bytes)."""
    shapes = {key: list(shape) for key, (_, shape) in source.entries.items()}
    for layer, quant_format in _comfy_native_layers(source).items():
        shapes[layer + "weight"][-1] *= COMFY_NATIVE_FORMATS[quant_format]
    state_keys = [key for key in source.entries if key.endswith(_BNB_STATE_SUFFIX)]
    for key, blob in (_read(source, state_keys) if state_keys else ()):
        try:
            shapes[key[: -len(_BNB_STATE_SUFFIX)]] = list(parse_bnb_quant_state(blob)["shape"])
        except ValueError as error:
            raise CheckpointError(f"{source.path}: {key}: {error}. " + SUPPORTED_LAYOUTS) from None
    return shapes


def _quantization_kind(entries: dict, prefix: str) -> str:
    probe = prefix + "layers.0.self_attn.q_proj."
    dtype_name = entries[probe + "weight"][0]
    if probe + "weight.absmax" in entries:
        return "nf4"
    if dtype_name in GGUF_BLOCK_TYPES:
        return "gguf"
    if probe + "comfy_quant" in entries or probe + "scale_weight" in entries:
        return "fp8_per_tensor"
    if probe + "weight_scale" in entries:
        scale_shape = entries[probe + "weight_scale"][1]
        return "fp8_rowwise" if len(scale_shape) == 1 and scale_shape[0] > 1 else "fp8_per_tensor"
    if SAFETENSORS_DTYPES.get(dtype_name) in FP8_DTYPES:
        return "fp8_unscaled"
    return "none"


def inspect_text_encoder_checkpoint(path: str | pathlib.Path) -> TextEncoderLayout:
    """Detect prefix, dimensions and quantisation of a text-encoder checkpoint without reading tensor data."""
    path = _resolve_weights_path(pathlib.Path(path).expanduser())
    source = _open(path)
    label = str(path)
    keys = list(source.entries)
    prefix = _find_text_prefix(keys, label, getattr(source, "architecture", None))
    _check_gguf_architecture(source, label)
    layer_indices = {int(m.group(1)) for key in keys if key.startswith(prefix)
                     for m in [_LAYER_KEY.match(key[len(prefix):])] if m}
    num_file_layers = max(layer_indices) + 1
    if num_file_layers < num_layers_to_build():
        raise CheckpointError(
            f"{label}: the language model has {num_file_layers} decoder layers; Ideogram 4 taps layer "
            f"{num_layers_to_build() - 1}, so it needs at least {num_layers_to_build()} (Qwen3-VL-8B has 36). "
            "This is a smaller model or a truncated file."
        )
    shapes = _logical_shapes(source)
    hf_config = find_config_json(path)
    if hf_config is not None:
        _check_config_model_type(hf_config, label)
        config, config_source = Qwen3VLTextConfig.from_hf_config(hf_config), "config.json"
    else:
        config, config_source = _config_from_shapes(shapes, prefix, num_file_layers), "tensor shapes"
    # Biases are not in the 8B model, but a file that has them decides (q_proj.bias is the tell).
    config = replace(config, attention_bias=prefix + "layers.0.self_attn.q_proj.bias" in source.entries)
    return TextEncoderLayout(
        path=path,
        prefix=prefix,
        config=config,
        config_source=config_source,
        num_file_layers=num_file_layers,
        quantization=_quantization_kind(source.entries, prefix),
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _weight_sidecars(key: str, entries: dict) -> dict[str, str]:
    """Quantisation sidecars of a ``<layer>.weight`` key that exist in the file: role -> key."""
    if not key.endswith(".weight"):
        return {}
    layer = key[: -len("weight")]
    roles = {"comfy_quant": layer + "comfy_quant", "weight_scale": layer + "weight_scale",
             "scale_weight": layer + "scale_weight", "absmax": key + ".absmax", "quant_map": key + ".quant_map",
             "quant_state": key + _BNB_STATE_SUFFIX, "weight_scale_2": layer + "weight_scale_2",
             "input_scale": layer + "input_scale"}
    return {role: sidecar for role, sidecar in roles.items() if sidecar in entries}


def _scaled_fp8(key: str, weight: torch.Tensor, sidecars: dict[str, torch.Tensor], label: str
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A stored tensor and its quantisation sidecars -> (weight, scale or None): the weight as stored (uint8 bytes
    of old ComfyUI files viewed as their fp8 dtype), the scale as stored (one value or per row)."""
    where = f"{label}: {key}"
    quant_format = None
    if "comfy_quant" in sidecars:
        quant_key = where[: -len("weight")] + "comfy_quant"
        quant_format = parse_comfy_quant(sidecars["comfy_quant"], where=quant_key)["format"]
        if quant_format not in COMFY_FP8_FORMATS:
            raise CheckpointError(
                f"{where}: uses ComfyUI quantisation format {quant_format!r}, which this pack does not de-quantise "
                f"(supported: {sorted(COMFY_FP8_FORMATS)}). Use qwen3vl_8b_fp8_scaled.safetensors or the bf16 weights."
            )
    scale = sidecars.get("weight_scale", sidecars.get("scale_weight"))
    kind = fp8_scaling(where, weight.dtype, tuple(weight.shape), None if scale is None else tuple(scale.shape),
                       quant_format)
    if quant_format is not None and weight.dtype == torch.uint8:  # older ComfyUI files store fp8 bytes as uint8
        weight = weight.view(COMFY_FP8_FORMATS[quant_format])
    return weight, scale if kind in ("rowwise", "per_tensor") else None


def _check_shapes(expected: dict[str, tuple[int, ...]], shapes: dict[str, list[int]], layout: TextEncoderLayout
                 ) -> None:
    missing = [key for key in expected if layout.prefix + key not in shapes]
    if missing:
        raise CheckpointError(
            f"{layout.path}: missing {len(missing)} tensors of the language model, e.g. "
            f"{[layout.prefix + key for key in missing[:5]]}. The file is incomplete or another model. "
            + SUPPORTED_LAYOUTS
        )
    wrong = [(layout.prefix + key, list(shapes[layout.prefix + key]), list(shape))
             for key, shape in expected.items() if tuple(shapes[layout.prefix + key]) != shape]
    if wrong:
        key, found, wanted = wrong[0]
        raise CheckpointError(
            f"{layout.path}: tensor {key} has shape {found}, but the dimensions from {layout.config_source} "
            f"({layout.config}) need {wanted} ({len(wrong)} tensors differ). The config.json does not belong to "
            "these weights; fix or remove it."
        )


KeepQuantized = Callable[[torch.nn.Module, QuantizedWeight, torch.Tensor, dict[str, torch.Tensor]], None]


def _stored_weight(source, file_key: str, tensor: torch.Tensor, sidecars: dict[str, torch.Tensor], shape, label: str
                   ) -> tuple[torch.Tensor, QuantizedWeight | None, dict[str, torch.Tensor]]:
    """A stored tensor and its sidecars -> (stored weight, how it is quantised or None, the sidecars a quantised
    layer holds). fp8 scales become the exact per-row scale; unscaled fp8 and plain tensors come back as stored."""
    shape = tuple(shape)
    if isinstance(source, GGUFSource) and source.entries[file_key][0] in GGUF_BLOCK_TYPES:
        return tensor, QuantizedWeight("gguf", shape, qtype=source.qtypes[file_key]), {}
    if "absmax" in sidecars:
        state = parse_bnb_quant_state(sidecars["quant_state"])
        return tensor, QuantizedWeight("nf4", shape, blocksize=state["blocksize"]), {
            "weight_absmax": sidecars["absmax"].reshape(-1).float(),
            "weight_quant_map": sidecars["quant_map"].reshape(16).float()}
    weight, scale = _scaled_fp8(file_key, tensor, sidecars, label)
    if scale is None:
        return weight, None, {}
    return weight, QuantizedWeight("fp8_rowwise", shape), {"weight_scale": as_row_scale(scale, weight.shape[0])}


def _weight_entries(model: torch.nn.Module, key: str, weight: torch.Tensor, quantized: QuantizedWeight | None,
                    sidecars: dict[str, torch.Tensor], dtype: torch.dtype, keep_quantized_with) -> dict:
    """State-dict entries for one stored weight (from :func:`_stored_weight`): a quantised Linear weight kept as
    stored with its sidecars (the layer prepared by ``keep_quantized_with``) when asked, else the weight
    de-quantised to ``dtype``; plain tensors in ``dtype`` (unscaled fp8 weights are used as stored, as ComfyUI
    does)."""
    if quantized is None:
        return {key: weight.to(dtype) if weight.is_floating_point() else weight}
    layer = key.rpartition(".")[0]
    module = model.get_submodule(layer)
    if keep_quantized_with is not None and isinstance(module, torch.nn.Linear):
        sidecars = {name: value.to(weight.device) for name, value in sidecars.items()}
        keep_quantized_with(module, quantized, weight, sidecars)
        return {key: weight, **{f"{layer}.{name}": value for name, value in sidecars.items()}}
    return {key: quantized.dequantize(weight, sidecars, dtype)}

def load_text_encoder_model(
    path: str | pathlib.Path,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    operations=None,
    keep_quantized_with: KeepQuantized | None = None,
    comfy_operations: Callable[[list[str]], object] | None = None,
) -> tuple[Qwen3VLTextEncoder, TextEncoderLayout]:
    """Build the encoder and fill it from ``path`` (quantised weights de-quantised to ``dtype`` once).

    The model is built on the meta device and the loaded tensors are assigned, so no second copy of the
    weights exists; tensors are streamed one at a time (each with its sidecars) and converted on ``device``
    (default CPU).

    keep_quantized_with: keep quantised Linear weights (scaled fp8, nf4, GGUF blocks) quantised instead of
    de-quantising them: each such Linear is first passed to ``keep_quantized_with(linear, quantized, stored,
    sidecars)`` (an :class:`ideogram4.quantization.QuantizedWeight`, the stored weight, the sidecar tensors it
    names), which must make the Linear hold them and de-quantise per call; a per-tensor fp8 scale becomes the
    equivalent per-row one. The ComfyUI nodes pass their quantised-layer maker.

    comfy_operations: for files whose layers are stored in a ComfyUI format only ComfyUI's own quantised layers read
    (Comfy-Org ``qwen3vl_8b_nvfp4``): called with those formats, returns the layers to build the encoder with (and
    may refuse). Every ComfyUI-quantised layer of such a file is then handed its stored tensors unchanged.
    """
    layout = inspect_text_encoder_checkpoint(path)
    source = _open(layout.path)
    native = _comfy_native_layers(source)
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    if native:
        formats = sorted(set(native.values()))
        if comfy_operations is None:
            raise CheckpointError(
                f"{layout.path}: stored in ComfyUI's {', '.join(formats)} format, which only ComfyUI's own quantised "
                "layers read; load it in ComfyUI, or use qwen3vl_8b_fp8_scaled.safetensors. " + SUPPORTED_LAYOUTS)
        operations = comfy_operations(formats)
    # ComfyUI's quantised layers keep their weights on the device they were built on, so such a model is built there.
    model = Qwen3VLTextEncoder(layout.config, dtype=dtype, device=target_device if native else "meta",
                               operations=operations)
    # The tensors the architecture needs (ComfyUI's quantised layers list theirs only once loaded).
    expected = {key: tuple(tensor.shape) for key, tensor in
                Qwen3VLTextEncoder(layout.config, dtype=dtype, device="meta").state_dict().items()}
    shapes = _logical_shapes(source)
    _check_shapes(expected, shapes, layout)

    sidecar_keys = {key: _weight_sidecars(layout.prefix + key, source.entries) for key in expected}
    order = [k for key in expected for k in (layout.prefix + key, *sidecar_keys[key].values())]
    stored = _read(source, order)
    label = str(layout.path)
    state_dict = {}
    for key in expected:
        file_key, tensor = next(stored)
        sidecars = {role: next(stored)[1] for role in sidecar_keys[key]}
        tensor = tensor.to(target_device)
        layer = key.rpartition(".")[0]
        if native and "comfy_quant" in sidecars:
            state_dict[key] = tensor  # ComfyUI's layer reads the weight and its sidecars as stored
            state_dict.update({f"{layer}.{role}": value.to(target_device) for role, value in sidecars.items()})
            continue
        weight, quantized, layer_sidecars = _stored_weight(source, file_key, tensor, sidecars, expected[key], label)
        state_dict.update(_weight_entries(model, key, weight, quantized, layer_sidecars, dtype, keep_quantized_with))
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    return model, layout


def load_text_encoder(
    path: str | pathlib.Path,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    operations=None,
    host_tokenizer_dir: str | pathlib.Path | None = None,
    keep_quantized_with: KeepQuantized | None = None,
    comfy_operations: Callable[[list[str]], object] | None = None,
) -> LoadedTextEncoder:
    """Load the Qwen3-VL text encoder and its tokenizer.

    path: a file, shard index or folder in one of the layouts of the module docstring. dtype: weight and
    compute dtype (bf16 = official). operations: layer namespace (:mod:`ideogram4.ops`). The tokenizer is a
    ``tokenizer/`` folder beside the weights, else ``host_tokenizer_dir`` (the running ComfyUI's bundled one,
    which the nodes pass; :func:`ideogram4.tokens.find_tokenizer_dir`). keep_quantized_with, comfy_operations: see
    :func:`load_text_encoder_model`.
    """
    # Find the tokenizer before reading gigabytes of weights, so a missing one fails fast.
    found_tokenizer_dir = find_tokenizer_dir(path, host_tokenizer_dir)
    encoder, layout = load_text_encoder_model(path, dtype=dtype, device=device, operations=operations,
                                              keep_quantized_with=keep_quantized_with,
                                              comfy_operations=comfy_operations)
    return LoadedTextEncoder(
        encoder=encoder, tokenizer=load_tokenizer(found_tokenizer_dir), layout=layout,
        tokenizer_dir=found_tokenizer_dir,
    )


# ----------------------------------------------------------------------------------------------------------------
# The language-model head (for text generation only; the features never use it)
# ----------------------------------------------------------------------------------------------------------------

LM_HEAD_KEY = "lm_head.weight"
LM_HEAD_SOURCES = (
    "Files that carry a head: the Hugging Face Qwen/Qwen3-VL-8B-Instruct weights or the official text_encoder/ "
    "folder when it has lm_head.weight, a ComfyUI Qwen3-VL-8B file saved with its lm_head, or the separate head "
    "file of diffusers/qwen3-vl-8b-instruct-lm-head (about 1.2 GB, put it in models/text_encoders)."
)


class LanguageModelHeadNotFoundError(CheckpointError):
    """Neither the text-encoder file nor the separate head file holds ``lm_head.weight``."""


def find_lm_head_key(path: str | pathlib.Path) -> str | None:
    """The key of the LM head weight in a file or folder (``lm_head.weight``, possibly under a prefix such as
    ``model.``), or None when it has none. Reads headers only."""
    entries = open_source(_resolve_weights_path(pathlib.Path(path).expanduser())).entries
    found = sorted(key for key in entries if key.endswith(LM_HEAD_KEY) and "visual" not in key)
    return found[0] if found else None


def load_language_model_head(
    text_encoder_path: str | pathlib.Path,
    head_path: str | pathlib.Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    operations=None,
    keep_quantized_with: KeepQuantized | None = None,
):
    """The final norm and LM head (:class:`ideogram4.text_generation.Qwen3VLLanguageModelHead`) of the text
    encoder in ``text_encoder_path``: the norm from that file, the head from it when it has ``lm_head.weight``,
    else from ``head_path``. Quantised heads are handled as the encoder's Linears (``keep_quantized_with``).
    Raises :class:`LanguageModelHeadNotFoundError` naming both files when neither has a head."""
    from .text_generation import Qwen3VLLanguageModelHead

    layout = inspect_text_encoder_checkpoint(text_encoder_path)
    head_key = find_lm_head_key(layout.path)
    head_source_path = layout.path
    if head_key is None and head_path is not None:
        head_source_path = _resolve_weights_path(pathlib.Path(head_path).expanduser())
        head_key = find_lm_head_key(head_source_path)
    if head_key is None:
        searched = f"{layout.path} has no {LM_HEAD_KEY}"
        searched += f", nor has {head_path}" if head_path is not None else " and no separate head file was given"
        raise LanguageModelHeadNotFoundError(f"{searched}. {LM_HEAD_SOURCES}")

    config = layout.config
    norm_key = layout.prefix + "norm.weight"
    sources = {"norm.weight": (open_source(layout.path), norm_key),
               "lm_head.weight": (open_source(head_source_path), head_key)}
    expected = {"norm.weight": (config.hidden_size,), "lm_head.weight": (config.vocab_size, config.hidden_size)}
    model = Qwen3VLLanguageModelHead(config, dtype=dtype, device="meta", operations=operations)
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    state_dict = {}
    for key, (source, file_key) in sources.items():
        label = str(source.path)
        if file_key not in source.entries:
            raise CheckpointError(f"{layout.path}: has no final norm {file_key}, which text generation needs. "
                                  f"{LM_HEAD_SOURCES}")
        shape = tuple(source.entries[file_key][1])
        if shape != expected[key]:
            raise CheckpointError(f"{label}: {file_key} has shape {list(shape)}, but the text encoder "
                                  f"({layout.path}) needs {list(expected[key])}; the head belongs to another model.")
        sidecar_keys = _weight_sidecars(file_key, source.entries)
        sidecars = dict(iter_tensors(source, list(sidecar_keys.values())))
        sidecars = {role: sidecars[k] for role, k in sidecar_keys.items()}
        ((_, tensor),) = list(iter_tensors(source, [file_key]))
        weight, quantized, layer_sidecars = _stored_weight(source, file_key, tensor.to(target_device), sidecars,
                                                           expected[key], label)
        state_dict.update(_weight_entries(model, key, weight, quantized, layer_sidecars, dtype, keep_quantized_with))
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
