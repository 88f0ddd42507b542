"""Ideogram 4 Prompt Enhancer: a plain idea -> an Ideogram 4 JSON caption, written by the loaded text encoder.

The core (:mod:`ideogram4.prompt_enhancer`) runs the pack's own Qwen3-VL decoder with a KV cache and decoding
constrained to the caption schema. This node adds the LM head (from the text-encoder file, else from
``lm_head_name``) in a patcher of its own, loads it with the encoder through ComfyUI's model management, and
reports every token to the progress bar and checks for Cancel after each one.
"""

from __future__ import annotations

import weakref

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..ideogram4.caption import prompt_text_problem
from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.constrained_decoding import CaptionTokenGrammar, TokenVocabulary
from ..ideogram4.prompt_enhancer import enhance_prompt
from ..ideogram4.safetensors_io import CheckpointError
from ..ideogram4.text_encoder_checkpoint import (
    LanguageModelHeadNotFoundError,
    find_lm_head_key,
    load_language_model_head,
)

from . import compat
from .quantized_ops import Ideogram4QuantizedOps, QuantizedWeightPatching, make_quantized_layer
from .settings import CATEGORY, MAX_SEED, MAX_SIZE, raise_problems, size_problems, validation_result
from .text_encoder_nodes import TEXT_ENCODER_FOLDER, Ideogram4TextEncoder, TextEncoderType

NODE_NAME = "Ideogram 4 Prompt Enhancer"
NO_HEAD_FILE = "none"
SIZE_MAX = MAX_SIZE
MAX_NEW_TOKENS_MAX = 4096

# Per loaded text encoder (weakly keyed, so it goes when ComfyUI drops the encoder): its LM heads by file and the
# token tables of its tokenizer, built once (reading 151k tokens takes seconds) instead of on every run.
_PER_ENCODER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _files_with_a_head() -> list[str]:
    """Files in models/text_encoders whose header holds an LM head (for the error message)."""
    found = []
    for name in folder_paths.get_filename_list(TEXT_ENCODER_FOLDER):
        path = folder_paths.get_full_path(TEXT_ENCODER_FOLDER, name)
        try:
            if path and find_lm_head_key(path) is not None:
                found.append(name)
        except (CheckpointError, OSError, ValueError):
            continue
    return found


def enhancer_problems(idea=None, width=None, height=None) -> list[str]:
    """Input-only problems (None = fed by a link): an idea that is empty or not valid text, an unusable size."""
    problems = []
    if isinstance(idea, str) and not idea.strip():
        problems.append("idea is empty; write what the image should show, e.g. 'a bakery sign at sunrise'")
    elif idea is not None and (problem := prompt_text_problem(idea)):
        problems.append(f"idea: {problem}")
    return problems + size_problems(width=width, height=height)


def _head_patcher(text_encoder: Ideogram4TextEncoder, lm_head_name: str):
    """The patcher holding the final norm and LM head for this encoder (loaded on first use)."""
    cache = _PER_ENCODER.setdefault(text_encoder, {})
    key = ("head", lm_head_name)
    if key in cache:
        return cache[key]
    head_path = None
    if lm_head_name and lm_head_name != NO_HEAD_FILE:
        head_path = folder_paths.get_full_path_or_raise(TEXT_ENCODER_FOLDER, lm_head_name)
    patcher = text_encoder.patcher
    try:
        head = load_language_model_head(text_encoder.loaded.layout.path, head_path,
                                        dtype=text_encoder.loaded.encoder.compute_dtype,
                                        device=patcher.offload_device, operations=Ideogram4QuantizedOps,
                                        keep_quantized_with=make_quantized_layer)
    except LanguageModelHeadNotFoundError as error:
        with_head = _files_with_a_head()
        where = (f"In models/{TEXT_ENCODER_FOLDER} these files carry one: {', '.join(with_head)}; pick one as "
                 "lm_head_name." if with_head else
                 f"No file in models/{TEXT_ENCODER_FOLDER} carries one.")
        raise ValueError(f"{NODE_NAME}: the text encoder has no language-model head (lm_head.weight), which text "
                         f"generation needs. {error} {where}") from error
    # The same kind of patcher as the encoder's (its quantised layers take patches after de-quantising).
    cache[key] = compat.new_patcher(head, patcher.load_device, patcher.offload_device,
                                    mixin=QuantizedWeightPatching, dynamic=False)
    return cache[key]


def _token_grammar(text_encoder: Ideogram4TextEncoder, keep_boxes: bool) -> CaptionTokenGrammar:
    cache = _PER_ENCODER.setdefault(text_encoder, {})
    if "vocabulary" not in cache:
        cache["vocabulary"] = TokenVocabulary.from_tokenizer(text_encoder.loaded.tokenizer,
                                                             text_encoder.loaded.layout.config.vocab_size)
    key = ("grammar", keep_boxes)
    if key not in cache:
        cache[key] = CaptionTokenGrammar(cache["vocabulary"], keep_boxes=keep_boxes)
    return cache[key]


class PromptEnhancer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefPromptEnhancer",
            display_name="Ideogram 4 Prompt Enhancer (reference)",
            category=CATEGORY,
            description="Writes an Ideogram 4 JSON caption from a short idea with the loaded Qwen3-VL text encoder "
                        "and a language-model head, offline. Decoding is constrained to the caption schema, so the "
                        "result always passes the caption check.",
            inputs=[
                TextEncoderType.Input("text_encoder", tooltip="From Ideogram 4 Text Encoder Loader; the same "
                                                              "weights write the caption (no second copy)."),
                io.String.Input("idea", multiline=True, default="",
                                tooltip="The idea in plain words, e.g. 'a bakery sign at sunrise that says FRESH "
                                        "BREAD'. Words to render in the image: put them in quotes."),
                io.Int.Input("width", default=1024, min=PIXELS_PER_TOKEN, max=SIZE_MAX, step=PIXELS_PER_TOKEN,
                             tooltip="Width of the image you will sample; the aspect ratio W:H goes into the request "
                                     "so the composition fits it."),
                io.Int.Input("height", default=1024, min=PIXELS_PER_TOKEN, max=SIZE_MAX, step=PIXELS_PER_TOKEN,
                             tooltip="Height of the image you will sample."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the token sampling (ignored at temperature 0)."),
                io.Float.Input("temperature", default=0.7, min=0.0, max=2.0, step=0.05,
                               tooltip="0 = always the most likely token (same caption every run); higher = more "
                                       "varied captions. 0.5-1.0 works well."),
                io.Int.Input("max_new_tokens", default=1024, min=1, max=MAX_NEW_TOKENS_MAX,
                             tooltip="Token budget of the caption. When it runs out the caption is closed properly "
                                     "(never cut inside a string); a detailed caption takes 300-800 tokens."),
                io.Combo.Input("lm_head_name",
                               options=[NO_HEAD_FILE] + folder_paths.get_filename_list(TEXT_ENCODER_FOLDER),
                               default=NO_HEAD_FILE, optional=True,
                               tooltip="A separate language-model head file in models/text_encoders (e.g. the "
                                       "published qwen3-vl-8b-instruct-lm-head safetensors). 'none': use the head in "
                                       "the text-encoder file (Hugging Face Qwen3-VL files have one)."),
                io.Boolean.Input("keep_boxes", default=False, optional=True,
                                 tooltip="Let the caption place elements with bbox [y_min, x_min, y_max, x_max] "
                                         "(0-1000). Off (default): no boxes, as the official magic prompt."),
            ],
            outputs=[io.String.Output(display_name="caption",
                                      tooltip="The caption as canonical minified JSON, for Ideogram 4 Text Encode.")],
        )

    @classmethod
    def validate_inputs(cls, idea=None, width=None, height=None) -> bool | str:
        # Run when the prompt is queued (inputs fed by links arrive as None; execute checks them then).
        return validation_result(NODE_NAME, enhancer_problems(idea, width, height))

    @classmethod
    def execute(cls, text_encoder: Ideogram4TextEncoder, idea: str, width: int, height: int, seed: int,
                temperature: float, max_new_tokens: int, lm_head_name: str = NO_HEAD_FILE,
                keep_boxes: bool = False) -> io.NodeOutput:
        raise_problems(NODE_NAME, enhancer_problems(idea, width, height))
        head_patcher = _head_patcher(text_encoder, lm_head_name)
        token_grammar = _token_grammar(text_encoder, keep_boxes)
        comfy.model_management.load_models_gpu([text_encoder.patcher, head_patcher])
        progress = comfy.utils.ProgressBar(max_new_tokens)

        def on_tokens(count: int) -> None:
            # Checked after every token, before the next model step, so a Cancel costs no further model call.
            progress.update_absolute(count, max_new_tokens)
            comfy.model_management.throw_exception_if_processing_interrupted()

        try:
            caption = enhance_prompt(text_encoder.loaded.encoder, head_patcher.model, text_encoder.loaded.tokenizer,
                                     token_grammar, idea, width, height, max_new_tokens, temperature=temperature,
                                     seed=seed, on_tokens=on_tokens, device=text_encoder.patcher.load_device)
        except ValueError as error:  # a budget too small for any caption: say which node and what to change
            if str(error).startswith(NODE_NAME):
                raise
            raise ValueError(f"{NODE_NAME}: {error}") from error
        return io.NodeOutput(caption, ui=ui.PreviewText(caption))
