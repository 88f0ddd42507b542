"""Loading the Qwen3-VL text encoder from the file layouts it is published in.

Accepted (all through :func:`load_text_encoder`):

* a Hugging Face ``text_encoder/`` folder (``config.json`` + one or sharded safetensors), keys
  ``model.language_model.*`` (``Qwen3VLForConditionalGeneration``) or ``language_model.*`` (``Qwen3VLModel``),
  bf16/fp32; the repository root holding ``text_encoder/`` works too;
* the official ``ideogram-ai/ideogram-4-fp8`` ``text_encoder/`` (``"ideogram_fp8_weight_only": true``): Linear
  weights float8_e4m3fn ``(out, in)`` + ``<name>.weight_scale`` float32 ``(out,)``, de-quantised once at load
  exactly like the official ``Fp8Linear`` (:func:`ideogram4.quantization.dequantize_fp8_rowwise`), or kept in fp8
  for per-call de-quantisation (``keep_fp8_with``, as the ComfyUI nodes load it);
* ComfyUI single files such as Comfy-Org's ``qwen3vl_8b_fp8_scaled.safetensors``: any key prefix in front of
  ``embed_tokens``/``layers.N`` (``model.language_model.``, ``model.``, ...), ``<layer>.comfy_quant`` +
  per-tensor ``<layer>.weight_scale`` (or the older ``.scale_weight``) fp8, unscaled fp8 taken as is.

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

from .quantization import (
    COMFY_FP8_FORMATS,
    FP8_DTYPES,
    as_row_scale,
    dequantize_fp8_per_tensor,
    dequantize_fp8_rowwise,
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

# The key that identifies a Qwen3 decoder (per-head q norm) and, by what precedes it, the language model prefix.
_Q_NORM_SUFFIX = "layers.0.self_attn.q_norm.weight"
_LAYER_KEY = re.compile(r"layers\.(\d+)\.")
OFFICIAL_FP8_CONFIG_FLAG = "ideogram_fp8_weight_only"
QWEN3_VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_text")
HF_TEXT_ENCODER_SUBFOLDER = "text_encoder"

SUPPORTED_LAYOUTS = (
    "Supported: a Hugging Face Qwen3-VL text_encoder/ folder (bf16/fp32, single or sharded), the official "
    "ideogram-4-fp8 text_encoder/ folder, or a ComfyUI single file such as qwen3vl_8b_fp8_scaled.safetensors."
)


@dataclass(frozen=True)
class TextEncoderLayout:
    """What :func:`inspect_text_encoder_checkpoint` found, from headers and config.json only.

    prefix: what precedes ``embed_tokens``/``layers.N`` in the keys; num_file_layers: decoder layers in the
    file; quantization: "none", "fp8_rowwise" (official), "fp8_per_tensor" (ComfyUI) or "fp8_unscaled".
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


def _describe_foreign(keys: list[str]) -> str:
    """What a file that is not a Qwen3-VL language model looks like, for the error message."""
    text = "\n".join(keys)
    sample = ", ".join(keys[:3])
    if "embed_image_indicator" in text or "llm_cond_proj" in text or ".attention.qkv." in text:
        return f"an Ideogram 4 DiT (diffusion model, keys like {sample}); load it with the DiT loader instead"
    if "double_blocks." in text or "single_blocks." in text or "joint_blocks." in text or "input_blocks." in text:
        return f"a diffusion model (keys like {sample}); it belongs in models/diffusion_models"
    if any(marker in text for marker in ("decoder.conv_in", "encoder.conv_in", "post_quant_conv", "decoder.up.",
                                         "decoder.up_blocks", "decoder.mid")):
        return f"a VAE / autoencoder (keys like {sample}); load it with a VAE loader instead"
    if "text_model.encoder.layers." in text:
        return f"a CLIP text encoder (keys like {sample}), not Qwen3-VL"
    if ".SelfAttention." in text and "encoder.block." in text:
        return f"a T5 text encoder (keys like {sample}), not Qwen3-VL"
    if "self_attn.q_proj" in text and "embed_tokens" in text:
        return (f"a language model without per-head q/k norms (Llama / Qwen2 / Qwen2.5-VL style, keys like "
                f"{sample}), not Qwen3-VL")
    if "visual." in text or "vision" in text:
        return f"a vision tower without its language model (keys like {sample})"
    if "lora_A" in text or "lora_down" in text:
        return f"a LoRA (keys like {sample}), not a full model"
    return f"an unrecognised state dict ({len(keys)} tensors, keys like {sample})"


def _find_text_prefix(keys: list[str], label: str) -> str:
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
        f"{label}: this is not a Qwen3-VL text encoder: it looks like {_describe_foreign(keys)}. " + SUPPORTED_LAYOUTS
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


def _quantization_kind(entries: dict, prefix: str) -> str:
    probe = prefix + "layers.0.self_attn.q_proj."
    dtype_name = entries[probe + "weight"][0]
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
    source = open_source(path)
    label = str(path)
    keys = list(source.entries)
    prefix = _find_text_prefix(keys, label)
    layer_indices = {int(m.group(1)) for key in keys if key.startswith(prefix)
                     for m in [_LAYER_KEY.match(key[len(prefix):])] if m}
    num_file_layers = max(layer_indices) + 1
    if num_file_layers < num_layers_to_build():
        raise CheckpointError(
            f"{label}: the language model has {num_file_layers} decoder layers; Ideogram 4 taps layer "
            f"{num_layers_to_build() - 1}, so it needs at least {num_layers_to_build()} (Qwen3-VL-8B has 36). "
            "This is a smaller model or a truncated file."
        )
    shapes = {key: shape for key, (_, shape) in source.entries.items()}
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
             "scale_weight": layer + "scale_weight"}
    return {role: sidecar for role, sidecar in roles.items() if sidecar in entries}


def _scaled_fp8(key: str, weight: torch.Tensor, sidecars: dict[str, torch.Tensor], label: str
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A stored tensor and its quantisation sidecars -> (weight, scale or None): the weight as stored (uint8 bytes
    of old ComfyUI files viewed as their fp8 dtype), the scale as stored (one value or per row)."""
    where = f"{label}: {key}"
    if "comfy_quant" in sidecars:
        quant_key = where[: -len("weight")] + "comfy_quant"
        quant_format = parse_comfy_quant(sidecars["comfy_quant"], where=quant_key)["format"]
        if quant_format not in COMFY_FP8_FORMATS:
            raise CheckpointError(
                f"{where}: uses ComfyUI quantisation format {quant_format!r}, which this pack does not de-quantise "
                f"(supported: {sorted(COMFY_FP8_FORMATS)}). Use qwen3vl_8b_fp8_scaled.safetensors or the bf16 weights."
            )
        if weight.dtype == torch.uint8:  # older ComfyUI files store fp8 bytes as uint8
            weight = weight.view(COMFY_FP8_FORMATS[quant_format])
    scale = sidecars.get("weight_scale", sidecars.get("scale_weight"))
    if scale is None:
        return weight, None
    if weight.dtype not in FP8_DTYPES:
        raise CheckpointError(f"{where}: has a weight scale but is stored as {weight.dtype}, not float8.")
    if scale.numel() == 1 or (weight.dim() == 2 and scale.shape == (weight.shape[0],)):
        return weight, scale
    raise CheckpointError(
        f"{where}: weight scale of shape {tuple(scale.shape)} fits neither per-tensor (one value) nor per-row "
        f"({weight.shape[0]},) scaling of a weight of shape {tuple(weight.shape)}."
    )


def _dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A stored weight and its scale (from :func:`_scaled_fp8`) -> ``dtype`` (see the module docstring)."""
    if scale is None:
        # Unscaled fp8 (or plain float) weights are used as stored, as ComfyUI does.
        return weight.to(dtype)
    if scale.numel() == 1:
        return dequantize_fp8_per_tensor(weight, scale, dtype)
    return dequantize_fp8_rowwise(weight, scale, dtype)


def _check_shapes(expected: dict[str, tuple[int, ...]], entries: dict, layout: TextEncoderLayout) -> None:
    missing = [key for key in expected if layout.prefix + key not in entries]
    if missing:
        raise CheckpointError(
            f"{layout.path}: missing {len(missing)} tensors of the language model, e.g. "
            f"{[layout.prefix + key for key in missing[:5]]}. The file is incomplete or another model. "
            + SUPPORTED_LAYOUTS
        )
    wrong = [(layout.prefix + key, list(entries[layout.prefix + key][1]), list(shape))
             for key, shape in expected.items() if tuple(entries[layout.prefix + key][1]) != shape]
    if wrong:
        key, found, wanted = wrong[0]
        raise CheckpointError(
            f"{layout.path}: tensor {key} has shape {found}, but the dimensions from {layout.config_source} "
            f"({layout.config}) need {wanted} ({len(wrong)} tensors differ). The config.json does not belong to "
            "these weights; fix or remove it."
        )


def _weight_entries(model: torch.nn.Module, key: str, weight: torch.Tensor, scale: torch.Tensor | None,
                   dtype: torch.dtype, keep_fp8_with) -> dict[str, torch.Tensor]:
    """State-dict entries for one stored weight: a scaled fp8 Linear weight kept in fp8 (with its row scale, the
    layer prepared by ``keep_fp8_with``) when asked, else the weight de-quantised to ``dtype``."""
    layer = key.rpartition(".")[0]
    if keep_fp8_with is not None and scale is not None and isinstance(model.get_submodule(layer), torch.nn.Linear):
        row_scale = as_row_scale(scale, weight.shape[0]).to(weight.device)
        keep_fp8_with(model.get_submodule(layer), row_scale)
        return {key: weight, layer + ".weight_scale": row_scale}
    return {key: _dequantize(weight, scale, dtype)}


def load_text_encoder_model(
    path: str | pathlib.Path,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    operations=None,
    keep_fp8_with: Callable[[torch.nn.Module, torch.Tensor], None] | None = None,
) -> tuple[Qwen3VLTextEncoder, TextEncoderLayout]:
    """Build the encoder and fill it from ``path`` (fp8 weights de-quantised to ``dtype`` once).

    The model is built on the meta device and the loaded tensors are assigned, so no second copy of the
    weights exists; tensors are streamed one at a time and converted on ``device`` (default CPU).

    keep_fp8_with: keep scaled fp8 Linear weights in fp8 (half the memory of bf16) instead of de-quantising them:
    each such Linear is first passed to ``keep_fp8_with(linear, row_scale)`` (``row_scale`` (out,) float32), which
    must make it hold an fp8 ``weight`` and a ``weight_scale`` Parameter and de-quantise per call with the official
    rule (:func:`ideogram4.quantization.dequantize_fp8_rowwise`); a per-tensor scale becomes the equivalent
    per-row one. The ComfyUI nodes pass their fp8 layer maker.
    """
    layout = inspect_text_encoder_checkpoint(path)
    source = open_source(layout.path)
    model = Qwen3VLTextEncoder(layout.config, dtype=dtype, device="meta", operations=operations)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    _check_shapes(expected, source.entries, layout)

    target_device = torch.device(device) if device is not None else torch.device("cpu")
    sidecar_keys = {key: _weight_sidecars(layout.prefix + key, source.entries) for key in expected}
    # The small sidecars first, so each big tensor can be converted and released as it is read.
    sidecar_values = dict(iter_tensors(source, [k for roles in sidecar_keys.values() for k in roles.values()]))
    label = str(layout.path)
    state_dict = {}
    file_keys = [layout.prefix + key for key in expected]
    for file_key, tensor in iter_tensors(source, file_keys):
        key = file_key[len(layout.prefix):]
        sidecars = {role: sidecar_values[k] for role, k in sidecar_keys[key].items()}
        tensor = tensor.to(target_device)
        if not (tensor.is_floating_point() or sidecars):
            state_dict[key] = tensor
            continue
        weight, scale = _scaled_fp8(file_key, tensor, sidecars, label)
        state_dict.update(_weight_entries(model, key, weight, scale, dtype, keep_fp8_with))
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    return model, layout


def load_text_encoder(
    path: str | pathlib.Path,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    operations=None,
    tokenizer_dir: str | pathlib.Path | None = None,
    keep_fp8_with: Callable[[torch.nn.Module, torch.Tensor], None] | None = None,
) -> LoadedTextEncoder:
    """Load the Qwen3-VL text encoder and its tokenizer.

    path: a file, shard index or folder in one of the layouts of the module docstring. dtype: weight and
    compute dtype (bf16 = official). operations: layer namespace (:mod:`ideogram4.ops`). tokenizer_dir: the
    tokenizer folder; when None, a ``tokenizer/`` folder beside the weights, else a ComfyUI host's
    ``qwen25_tokenizer`` (:func:`ideogram4.tokens.find_tokenizer_dir`). keep_fp8_with: see
    :func:`load_text_encoder_model`.
    """
    # Find the tokenizer before reading gigabytes of weights, so a missing one fails fast.
    found_tokenizer_dir = find_tokenizer_dir(weights_path=path, tokenizer_dir=tokenizer_dir)
    encoder, layout = load_text_encoder_model(path, dtype=dtype, device=device, operations=operations,
                                              keep_fp8_with=keep_fp8_with)
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
    keep_fp8_with: Callable[[torch.nn.Module, torch.Tensor], None] | None = None,
):
    """The final norm and LM head (:class:`ideogram4.text_generation.Qwen3VLLanguageModelHead`) of the text
    encoder in ``text_encoder_path``: the norm from that file, the head from it when it has ``lm_head.weight``,
    else from ``head_path``. Scaled fp8 heads are handled as the encoder's Linears (``keep_fp8_with``).
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
        weight, scale = _scaled_fp8(file_key, tensor.to(target_device), sidecars, label)
        state_dict.update(_weight_entries(model, key, weight, scale, dtype, keep_fp8_with))
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
