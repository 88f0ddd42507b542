"""The caption editor's server side: its saved state, and the answers of its validation route.

The editor (web/js/ideogram4_caption_studio.js) keeps everything an artist sets in one JSON *state* string, the
value of the Caption node's ``state`` widget, so a saved workflow reopens with the same caption and frame, and an
API-format prompt carries a plain string that runs without a browser::

    {"width": 1024, "height": 1024, "caption": {<an Ideogram 4 caption object>}}

The editor never checks a caption itself: it posts it to the pack's route, which answers with
:func:`check_request` (the rules and the canonical serialiser of :mod:`ideogram4.caption`, one implementation).
Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .caption import (ELEMENT_PALETTE_MAX, STYLE_PALETTE_MAX, canonical_key_order, serialize_caption, validate_caption,
                      validate_caption_object)
from .constants import PIXELS_PER_TOKEN

SIZE_MIN, SIZE_MAX = 256, 2048  # the official pipeline's documented range (spec G.1)
# The official example sizes (width, height) as the editor offers them; any other multiple of 16 is "custom".
FRAME_SIZES = ((1024, 1024), (1536, 1024), (1024, 1536), (1920, 1088), (1088, 1920), (2048, 768), (1024, 1792),
               (1600, 400), (2048, 2048))
# The medium values the official prompting guide names; the editor offers them, any string is allowed.
MEDIUMS = ("photograph", "illustration", "3d_render", "painting", "graphic_design")
# Suggestions only (free text in the caption): words the official guide's examples use.
AESTHETICS = ("cinematic", "minimalist", "warm, cozy and inviting", "moody", "vibrant", "elegant", "playful")
LIGHTING = ("soft natural daylight", "golden hour sunlight", "studio softbox lighting", "dramatic rim light",
            "neon glow at night", "overcast diffuse light")

DEFAULT_CAPTION = {
    "high_level_description": "",
    "compositional_deconstruction": {"background": "", "elements": []},
}


class CaptionStateError(ValueError):
    """A state string the Caption node cannot use; the message names the node, the input and what to do."""


@dataclasses.dataclass(frozen=True)
class CaptionState:
    width: int
    height: int
    caption: dict


def default_state_text() -> str:
    return json.dumps({"width": 1024, "height": 1024, "caption": DEFAULT_CAPTION}, ensure_ascii=False)


def _state_error(message: str) -> CaptionStateError:
    return CaptionStateError(
        f"Ideogram 4 Caption: the state input {message}. Edit the caption in the node's editor, or write "
        '{"width": 1024, "height": 1024, "caption": {...}} (width and height multiples of 16, 256-2048).')


def parse_state(text: str) -> CaptionState:
    """The frame and caption of a state string; a malformed one raises :class:`CaptionStateError`."""
    try:
        state = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise _state_error(f"is not valid JSON ({error})") from None
    if not isinstance(state, dict):
        raise _state_error("must be a JSON object")
    for name in ("width", "height"):
        value = state.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _state_error(f'has no integer "{name}" (got {value!r})')
        if not SIZE_MIN <= value <= SIZE_MAX or value % PIXELS_PER_TOKEN:
            raise _state_error(f'has "{name}" {value}; expected a multiple of {PIXELS_PER_TOKEN} from {SIZE_MIN} '
                               f"to {SIZE_MAX}")
    if not isinstance(state.get("caption"), dict):
        raise _state_error('has no "caption" object')
    return CaptionState(state["width"], state["height"], state["caption"])


def caption_of_state(text: str) -> tuple[str, int, int]:
    """(canonical minified caption, width, height) of a state string. A caption that breaks a rule raises
    :class:`CaptionStateError` listing every problem with its JSON path."""
    state = parse_state(text)
    problems = validate_caption_object(state.caption)
    if problems:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise CaptionStateError(f"Ideogram 4 Caption: the caption breaks {len(problems)} rule(s); fix them in the "
                                f"node's editor (each is shown next to its field):\n{listed}")
    return serialize_caption(state.caption), state.width, state.height


def check_request(body: Any) -> dict:
    """The answer of the validation route for a request body (a parsed JSON object).

    ``{"caption": {...}}`` checks a caption object as it is (key order included); ``{"text": "..."}`` checks a
    caption written as JSON text, and with ``"reorder": true`` first puts its keys in canonical order (the
    editor's "paste JSON"). The answer: ``ok``, ``problems`` (``path``, ``message``, ``hint`` each, in document
    order), ``warnings``, ``caption`` (the checked object, or None when the text is not JSON) and ``canonical``
    (its minified form, as the model reads it, or None).
    """
    if not isinstance(body, dict) or ("caption" in body) == ("text" in body):
        return _answer_error('send a JSON object with either "caption" (an object) or "text" (a string)')
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str):
            return _answer_error('"text" must be a string')
        report = validate_caption(text)
        if report.kind != "json":
            return _answer_error("the text is not a JSON caption: it must start with {")
        caption = report.caption
        if caption is not None and body.get("reorder"):
            caption = canonical_key_order(caption)
            report = validate_caption(serialize_caption(caption))
        problems, warnings = report.problems, report.warnings
    else:
        caption = body["caption"]
        problems, warnings = validate_caption_object(caption), []
    return {
        "ok": not problems,
        "problems": [dataclasses.asdict(problem) for problem in problems],
        "warnings": list(warnings),
        "caption": caption,
        "canonical": None if caption is None else serialize_caption(caption),
    }


def _answer_error(message: str) -> dict:
    return {"ok": False, "problems": [{"path": "$", "message": message, "hint": ""}], "warnings": [],
            "caption": None, "canonical": None}


def editor_options(presets: dict[str, Any], custom_preset: str) -> dict:
    """What the web extension needs from the pack (one source): frame sizes, known values, sampler presets.

    ``presets``: combo label -> :class:`ideogram4.presets.SamplerPreset`."""
    from .guidance import format_guidance_schedule

    return {
        "frame_sizes": [list(size) for size in FRAME_SIZES],
        "size_min": SIZE_MIN, "size_max": SIZE_MAX, "size_step": PIXELS_PER_TOKEN,
        "mediums": list(MEDIUMS), "aesthetics": list(AESTHETICS), "lighting": list(LIGHTING),
        "style_palette_max": STYLE_PALETTE_MAX, "element_palette_max": ELEMENT_PALETTE_MAX,
        "custom_preset": custom_preset,
        "presets": {label: {"steps": preset.steps, "mu": preset.mu, "std": preset.std,
                            "guidance_schedule": format_guidance_schedule(preset.guidance)}
                    for label, preset in presets.items()},
    }
