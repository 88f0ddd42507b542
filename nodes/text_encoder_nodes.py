"""Ideogram 4 Text Encoder Loader and Text Encode.

The encoder (Qwen3-VL language model tapped at 13 layers, :mod:`ideogram4.text_encoder`) lives in its own patcher
on ``text_encoder_device()`` with ``text_encoder_offload_device()`` as offload device, so ComfyUI loads it only
while encoding and can free it before sampling. Text Encode returns a native CONDITIONING
``[[features (1, n, 53248), {}]]``; problems the caption check finds (:func:`ideogram4.caption.validate_caption`)
are logged and shown on the node, never fatal (the prompt is encoded as written). Its optional official size
encodes the text together with that image's token slots, as the official pipeline does
(:func:`ideogram4.text_encoder.encode_prompts` ``image_slots``), for bit-identical bf16 features.
"""

from __future__ import annotations

import logging

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..ideogram4.caption import prompt_text_problem, validate_caption
from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.limits import MAX_IMAGE_SIDE, size_problem
from ..ideogram4.text_encoder import image_slot_count
from ..ideogram4.text_encoder_checkpoint import LoadedTextEncoder, load_text_encoder

from . import compat
from .model_folders import model_file_list, model_file_path
from .precision import text_encoder_compute_dtype
from .quantized_ops import (
    Ideogram4QuantizedOps,
    QuantizedWeightPatching,
    comfy_operations_for,
    make_quantized_layer,
)
from .settings import CATEGORY, raise_problems, validation_result

TEXT_ENCODER_FOLDER = "text_encoders"
TextEncoderType = io.Custom("IDEOGRAM4_TEXT_ENCODER")


class Ideogram4TextEncoder:
    """The IDEOGRAM4_TEXT_ENCODER value: the loaded encoder, its tokenizer, and the patcher that owns the weights.

    A plain ``ModelPatcher``: the core loader fills the weights before any patcher exists, which the dynamic-VRAM
    patcher does not support (ComfyUI's own text encoders can opt out of it the same way).
    """

    def __init__(self, loaded: LoadedTextEncoder, load_device, offload_device):
        self.loaded = loaded
        self.patcher = compat.new_patcher(loaded.encoder, load_device, offload_device,
                                          mixin=QuantizedWeightPatching, dynamic=False)

    def encode(self, prompt: str, image_slots: int = 0) -> torch.Tensor:
        """One prompt -> text features (1, n, hidden*13) float32 on ComfyUI's intermediate device.
        ``image_slots`` > 0 encodes it with that many image slots, as the official pipeline does."""
        comfy.model_management.load_models_gpu([self.patcher])
        features, _ = self.loaded.encode([prompt], device=self.patcher.load_device, image_slots=image_slots)
        return features.to(comfy.model_management.intermediate_device())


def load_text_encoder_for_comfy(path: str) -> Ideogram4TextEncoder:
    """Load a text-encoder file (any layout :func:`ideogram4.text_encoder_checkpoint.load_text_encoder` reads)
    with comfy.ops layers on the offload device; computes in bf16 (official) where the device supports it, or as
    ``--bf16-text-enc`` / ``--fp32-text-enc`` say (:mod:`.precision`).

    Quantised Linear weights stay quantised and are de-quantised per layer when it runs: scaled fp8 (Comfy-Org
    qwen3vl_8b_fp8_scaled, the official fp8 release; the official rule, the same features as de-quantising at load
    in half the memory: about 8.2 GB instead of 15.1 GB for the 8B encoder), nf4 (official ideogram-4-nf4) and
    GGUF blocks."""
    load_device = comfy.model_management.text_encoder_device()
    offload_device = comfy.model_management.text_encoder_offload_device()
    dtype = text_encoder_compute_dtype(load_device)
    loaded = load_text_encoder(
        path, dtype=dtype, device=offload_device, operations=Ideogram4QuantizedOps,
        host_tokenizer_dir=compat.host_qwen_tokenizer_dir(), keep_quantized_with=make_quantized_layer,
        comfy_operations=lambda formats: comfy_operations_for(
            "Ideogram 4 Text Encoder Loader", path, formats, dtype, load_device,
            "qwen3vl_8b_fp8_scaled.safetensors (Comfy-Org), a Qwen3-VL-8B-Instruct GGUF or the official "
            "ideogram-4-fp8 / ideogram-4-nf4 text_encoder"))
    return Ideogram4TextEncoder(loaded, load_device, offload_device)


class TextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefTextEncoderLoader",
            display_name="Ideogram 4 Text Encoder Loader (reference)",
            category=CATEGORY,
            description="Loads the Qwen3-VL-8B text encoder of Ideogram 4 (Comfy-Org qwen3vl_8b_fp8_scaled, the "
                        "official fp8 or nf4, a Qwen3-VL-8B GGUF, or a Hugging Face text_encoder folder).",
            inputs=[
                io.Combo.Input("text_encoder_name", options=model_file_list(TEXT_ENCODER_FOLDER),
                               tooltip="The Qwen3-VL text encoder in models/text_encoders, e.g. "
                                       "qwen3vl_8b_fp8_scaled.safetensors or a Qwen3-VL-8B-Instruct GGUF."),
            ],
            outputs=[TextEncoderType.Output(tooltip="The Ideogram 4 text encoder, for Ideogram 4 Text Encode.")],
        )

    @classmethod
    def execute(cls, text_encoder_name: str) -> io.NodeOutput:
        path = model_file_path(TEXT_ENCODER_FOLDER, text_encoder_name)
        return io.NodeOutput(load_text_encoder_for_comfy(path))


CAPTION_OK_TEXT = "Caption check: no problems."


def caption_report_text(prompt: str) -> str | None:
    """The caption check's summary when it has something to say (problems or warnings), else None."""
    report = validate_caption(prompt)
    if not report.problems and not report.warnings:
        return None
    return report.summary()


OFFICIAL_SIZE_TOOLTIP = (
    "0 = encode the text alone (faster, same maths). Set to the image size you sample at to reproduce the "
    "official pipeline's text features bit for bit (it encodes the text together with the image's token slots)."
)
OFFICIAL_SIZE_MAX = MAX_IMAGE_SIDE
TEXT_ENCODE_NAME = "Ideogram 4 Text Encode"


def text_encode_problems(prompt=None, official_width=None, official_height=None) -> list[str]:
    """Input-only problems of Text Encode (None = fed by a link, checked when the node runs): a prompt that cannot
    be encoded (:func:`ideogram4.caption.prompt_text_problem`), an official size that is not 0 or a usable side
    (a multiple of 16 up to the size limit; set it to the size you sample at)."""
    problems = []
    if prompt is not None:
        problems.append(prompt_text_problem(prompt))
    for name, value in (("official_width", official_width), ("official_height", official_height)):
        if value is not None:
            problems.append(size_problem(name, value, allow_zero=True))
    return [problem for problem in problems if problem]


def official_image_slots(official_width: int, official_height: int) -> int:
    """Image slots for Text Encode's official size: both > 0 -> the image's token count; either 0 -> 0 (text
    alone). Raises ValueError naming the inputs when a size is not 0 or a usable side."""
    raise_problems(TEXT_ENCODE_NAME, text_encode_problems(official_width=official_width,
                                                          official_height=official_height))
    if official_width == 0 or official_height == 0:
        return 0
    return image_slot_count(official_width, official_height)


class TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefTextEncode",
            display_name="Ideogram 4 Text Encode (reference)",
            category=CATEGORY,
            description="Encodes a prompt (best: an Ideogram 4 JSON caption; plain text works) into text features. "
                        "Caption problems are reported on the node and in the log.",
            inputs=[
                TextEncoderType.Input("text_encoder", tooltip="From Ideogram 4 Text Encoder Loader."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt: an Ideogram 4 JSON caption (minified JSON as the model was "
                                        "trained on) or plain text. It is encoded exactly as written."),
                # Last, so saved workflows keep their widget order.
                io.Int.Input("official_width", default=0, min=0, max=OFFICIAL_SIZE_MAX, step=PIXELS_PER_TOKEN,
                             optional=True, tooltip=OFFICIAL_SIZE_TOOLTIP),
                io.Int.Input("official_height", default=0, min=0, max=OFFICIAL_SIZE_MAX, step=PIXELS_PER_TOKEN,
                             optional=True, tooltip=OFFICIAL_SIZE_TOOLTIP),
            ],
            outputs=[io.Conditioning.Output(tooltip="Text features (1, tokens, 53248) for the Ideogram 4 Sampler "
                                                    "or Guider.")],
        )

    @classmethod
    def validate_inputs(cls, prompt=None, official_width=None, official_height=None) -> bool | str:
        return validation_result(TEXT_ENCODE_NAME, text_encode_problems(prompt, official_width, official_height))

    @classmethod
    def execute(cls, text_encoder: Ideogram4TextEncoder, prompt: str, official_width: int = 0,
                official_height: int = 0) -> io.NodeOutput:
        raise_problems(TEXT_ENCODE_NAME, text_encode_problems(prompt=prompt))
        image_slots = official_image_slots(official_width, official_height)
        report = caption_report_text(prompt)
        if report is not None:
            logging.warning("Ideogram 4 Text Encode: %s", report)
        features = text_encoder.encode(prompt, image_slots=image_slots)
        # Always send a text, so the node's report (web/js) is replaced on every run, not left stale.
        return io.NodeOutput([[features, {}]], ui=ui.PreviewText(report or CAPTION_OK_TEXT))
