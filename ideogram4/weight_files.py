"""What kind of weight file is this: one classifier, by content (tensor names and the GGUF architecture), never
by file name. The loaders use it to say what a file they cannot read is and where it belongs instead.

:func:`classify_keys` names the model a set of tensor keys belongs to; :func:`describe_model_kind` turns that into
the words of an error message; :func:`classify_weight_file` reads only a file's header (safetensors or GGUF).
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

# Model kinds, with the words an error message uses for each.
IDEOGRAM4_DIT = "ideogram4_dit"
QWEN3_TEXT_ENCODER = "qwen3_text_encoder"
KIND_WORDS = {
    IDEOGRAM4_DIT: "an Ideogram 4 DiT (diffusion model); it belongs in models/diffusion_models and the DiT Loader",
    QWEN3_TEXT_ENCODER: "a Qwen3 language model (text encoder); it belongs in models/text_encoders and the Ideogram 4 "
                        "Text Encoder Loader",
    "ideogram4_dit_incomplete": "Ideogram 4-style transformer blocks without embed_image_indicator.weight: the file "
                                "is incomplete",
    "sd_unet": "a Stable Diffusion / SDXL UNet, not an Ideogram 4 model",
    "flux": "a FLUX transformer (double_blocks/single_blocks), not an Ideogram 4 model",
    "sd3": "an SD3 MMDiT (joint_blocks), not an Ideogram 4 model",
    "vae": "a VAE / autoencoder; load it with a VAE loader",
    "lora": "a LoRA; apply it with a LoRA loader, it is not a full model",
    "clip_text": "a CLIP text encoder, not Qwen3-VL",
    "t5": "a T5 text encoder, not Qwen3-VL",
    "llm_without_qk_norm": "a language model (text encoder) without per-head q/k norms (Llama / Qwen2 / Qwen2.5-VL "
                           "style), not Qwen3-VL",
    "vision_tower": "a vision tower without its language model",
    "unknown": "an unrecognised state dict",
}
_VAE_MARKERS = ("decoder.conv_in", "encoder.conv_in", "post_quant_conv", "decoder.up.", "decoder.up_blocks",
                "decoder.mid")
_LORA_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up")
_LLAMA_CPP_LANGUAGE_MODEL = re.compile(r"(^|\.)blk\.\d+\.attn_q\.weight$")


def classify_keys(keys, architecture: str | None = None) -> str:
    """The kind of model (a key of :data:`KIND_WORDS`) that tensors named ``keys`` make up. ``architecture`` is a
    GGUF file's ``general.architecture``, if any."""
    keys = list(keys)
    text = "\n".join(keys)
    if any(key.endswith("embed_image_indicator.weight") for key in keys):
        return IDEOGRAM4_DIT
    if "input_blocks." in text or "middle_block." in text:
        return "sd_unet"
    if "double_blocks." in text and "single_blocks." in text:
        return "flux"
    if "joint_blocks." in text:
        return "sd3"
    if "self_attn.q_norm" in text and "embed_tokens" in text:
        return QWEN3_TEXT_ENCODER
    if any(_LLAMA_CPP_LANGUAGE_MODEL.search(key) for key in keys) or "token_embd.weight" in keys:
        return QWEN3_TEXT_ENCODER if architecture in ("qwen3", "qwen3vl") else "llm_without_qk_norm"
    if any(marker in text for marker in _LORA_MARKERS):
        return "lora"
    if "text_model.encoder.layers." in text:
        return "clip_text"
    if ".SelfAttention." in text and "encoder.block." in text:
        return "t5"
    if "self_attn.q_proj" in text and "embed_tokens" in text:
        return "llm_without_qk_norm"
    if any(marker in text for marker in _VAE_MARKERS):
        return "vae"
    if ".attention.qkv." in text or ".attention.to_q." in text:
        return "ideogram4_dit_incomplete"
    if "visual." in text or "vision" in text:
        return "vision_tower"
    return "unknown"


def describe_model_kind(keys, architecture: str | None = None) -> str:
    """The words for an error message about a file holding tensors ``keys``: its kind and a few key names."""
    keys = list(keys)
    words = KIND_WORDS[classify_keys(keys, architecture)]
    found = f"a GGUF file of architecture {architecture!r} holding " if architecture else ""
    return f"{found}{words} ({len(keys)} tensors, keys like {', '.join(keys[:3])})"


@dataclass(frozen=True)
class WeightFileKind:
    """What :func:`classify_weight_file` found: ``container`` ("safetensors" or "gguf"), ``model`` (a key of
    :data:`KIND_WORDS`), the GGUF ``architecture`` and a sentence for messages."""

    container: str
    model: str
    architecture: str | None
    description: str


def classify_weight_file(path: str | pathlib.Path) -> WeightFileKind:
    """Classify a weight file from its header alone (GGUF by its magic bytes, else safetensors; pickles are
    refused unopened). Raises :class:`ideogram4.safetensors_io.CheckpointError` for a file neither can read."""
    from .gguf_io import is_gguf_file, open_gguf
    from .safetensors_io import open_source

    if is_gguf_file(path):
        source = open_gguf(path)
        container, architecture = "gguf", source.architecture
    else:
        source = open_source(path)
        container, architecture = "safetensors", None
    keys = list(source.entries)
    return WeightFileKind(container, classify_keys(keys, architecture), architecture,
                          describe_model_kind(keys, architecture))
