"""Local prompt enhancer: a plain idea becomes an Ideogram 4 JSON caption, written by the pipeline's own
Qwen3-VL (spec §F.2) with an LM head, constrained to the caption schema so the result always validates.

The request is a chat with the pack's own system prompt (:data:`SYSTEM_PROMPT`) and a user turn carrying the
aspect ratio ``W:H`` (reduced by the gcd, width first, as the official magic prompt sends it) and the idea,
rendered in Qwen's chat format and tokenised as one string.
"""

from __future__ import annotations

import math
from typing import Callable

from .constrained_decoding import CaptionTokenGrammar, ConstrainedCaptionChoice
from .text_encoder import Qwen3VLTextEncoder
from .text_generation import Qwen3VLLanguageModelHead, generate

SYSTEM_PROMPT = """You write image captions for the Ideogram 4 image model. Turn the user's idea into one JSON caption \
and output only that JSON, minified on one line.

Keys, in this order:
- "high_level_description": one or two sentences naming the subject, the setting and the medium.
- "style_description" (optional): {"aesthetics", "lighting", "photo", "medium", "color_palette"} for photographs \
("medium": "photograph", "photo" = camera and lens), or {"aesthetics", "lighting", "medium", "art_style", \
"color_palette"} for anything else ("medium" such as illustration, painting, 3d_render, graphic_design). \
"color_palette" is optional: up to 16 colours as uppercase "#RRGGBB".
- "compositional_deconstruction": {"background": the scene behind the elements, "elements": a list}.

Each element is {"type": "obj", "desc": ...} for a thing or a person, or {"type": "text", "text": the exact \
words, "desc": how they look} for lettering in the image. An element may add "color_palette" (up to 5 colours) \
after "desc", and, where asked for, a "bbox" [y_min, x_min, y_max, x_max] on a 0-1000 grid from the top-left \
corner, right after "type".

Guidelines: the main subject is the first element. Describe what is visible: shapes, materials, colours, \
positions relative to the frame and to each other. Keep words the user wants written verbatim in a text element. \
Choose one concrete option rather than listing alternatives. Compose for the aspect ratio given. Write in the \
user's language."""

USER_TEMPLATE = "Aspect ratio (width:height): {aspect_ratio}\nIdea: {idea}"
BOXES_REQUEST = "\nGive every element a bbox."
CHAT_TEMPLATE = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def aspect_ratio(width: int, height: int) -> str:
    """``"W:H"`` reduced by the greatest common divisor, e.g. 1920 x 1080 -> ``"16:9"``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"aspect_ratio: width and height must be positive, got {width} x {height}")
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def enhancer_request(idea: str, width: int, height: int, keep_boxes: bool = False) -> str:
    """The full chat text the model continues: system prompt, user turn, the assistant turn opened."""
    if not idea.strip():
        raise ValueError("the idea is empty; write what the image should show, e.g. 'a bakery sign at sunrise'")
    user = USER_TEMPLATE.format(aspect_ratio=aspect_ratio(width, height), idea=idea.strip())
    if keep_boxes:
        user += BOXES_REQUEST
    return CHAT_TEMPLATE.format(system=SYSTEM_PROMPT, user=user)


def generate_caption(encoder: Qwen3VLTextEncoder, head: Qwen3VLLanguageModelHead, token_grammar: CaptionTokenGrammar,
                     prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                     use_cache: bool = True, on_tokens: Callable[[int], None] | None = None, device=None) -> str:
    """A caption continuing ``prompt_ids``, constrained to the schema, in at most ``max_new_tokens`` tokens.
    Returns the canonical minified caption. Raises :class:`ideogram4.constrained_decoding.CaptionBudgetError`
    when the budget cannot hold the shortest caption."""
    choice = ConstrainedCaptionChoice(token_grammar, max_new_tokens, temperature=temperature, seed=seed)
    generate(encoder, head, prompt_ids, max_new_tokens, choice, use_cache=use_cache, on_tokens=on_tokens,
             device=device)
    return choice.caption()


def enhance_prompt(encoder: Qwen3VLTextEncoder, head: Qwen3VLLanguageModelHead, tokenizer,
                   token_grammar: CaptionTokenGrammar, idea: str, width: int, height: int, max_new_tokens: int,
                   temperature: float = 0.0, seed: int = 0,
                   on_tokens: Callable[[int], None] | None = None, device=None) -> str:
    """The idea as an Ideogram 4 caption (canonical minified JSON). ``token_grammar`` decides whether elements
    may carry boxes (its ``keep_boxes``); the request asks for boxes then too."""
    request = enhancer_request(idea, width, height, keep_boxes=token_grammar.grammar.keep_boxes)
    prompt_ids = list(tokenizer(request, add_special_tokens=False)["input_ids"])
    return generate_caption(encoder, head, token_grammar, prompt_ids, max_new_tokens, temperature=temperature,
                            seed=seed, on_tokens=on_tokens, device=device)
