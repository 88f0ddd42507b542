"""The caption automaton against the pack's validator (ideogram4.caption), without a model.

Random walks choose uniformly among the automaton's allowed next steps (bytes, or whole Qwen tokens) and every
prefix is closed by the automaton's shortest completion: each result must pass validate_caption with no problem.
Hand-written captions check what it must refuse (the validator's rules) and accept (the canonical form).
"""

import json
import random

import pytest

from ideogram4.caption import validate_caption
from ideogram4.caption_grammar import START_STATE, CaptionGrammar

VALID = {
    "high_level_description": 'A "FRESH" sign — café',
    "style_description": {"aesthetics": "a", "lighting": "b", "photo": "c", "medium": "photograph",
                          "color_palette": ["#C8893B", "#F3E3C3"]},
    "compositional_deconstruction": {"background": "bg\nline", "elements": [
        {"type": "obj", "desc": "x"},
        {"type": "text", "bbox": [10, 20, 300, 1000], "text": "HI", "desc": "d", "color_palette": ["#000000"]}]},
}


def _minified(caption) -> bytes:
    return json.dumps(caption, separators=(",", ":"), ensure_ascii=False).encode()


def _edited(**changes) -> dict:
    caption = json.loads(json.dumps(VALID))
    for path, value in changes.items():
        target = caption
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is None:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return caption


def test_accepts_a_canonical_caption_with_boxes_and_every_optional_key():
    assert validate_caption(_minified(VALID).decode()).ok
    assert CaptionGrammar(keep_boxes=True).advance(START_STATE, _minified(VALID)) == ()
    # Without keep_boxes a bbox is refused where it would start.
    assert CaptionGrammar(keep_boxes=False).advance(START_STATE, _minified(VALID)) is None


@pytest.mark.parametrize("change", [
    {"compositional_deconstruction__elements__1__bbox": [300, 20, 300, 1000]},  # y_min == y_max
    {"compositional_deconstruction__elements__1__bbox": [10, 900, 300, 899]},  # x_min > x_max
    {"compositional_deconstruction__elements__1__bbox": [10, 20, 300, 1001]},  # above 1000
    {"compositional_deconstruction__elements__1__bbox": [10, 20, 300]},  # three values
    {"compositional_deconstruction__elements__1__bbox": [10.5, 20, 300, 400]},
    {"style_description__color_palette": ["#c8893b"]},  # lowercase hex
    {"style_description__color_palette": ["#C88"]},
    {"style_description__color_palette": ["#000000"] * 17},
    {"compositional_deconstruction__elements__1__color_palette": ["#000000"] * 6},
    {"style_description__art_style": "oil"},  # both photo and art_style
    {"style_description__photo": None},  # neither
    {"compositional_deconstruction__elements__0__type": "shape"},
    {"compositional_deconstruction__elements__0__text": "words"},  # text on an obj element
    {"compositional_deconstruction__elements__1__desc": None},
    {"compositional_deconstruction__background": None},
    {"compositional_deconstruction__elements": []},  # the enhancer always writes at least one element
    {"high_level_description": None},  # the enhancer always writes the summary
    {"high_level_description": 5},
])
def test_refuses_captions_that_break_a_rule(change):
    caption = _edited(**change)
    assert CaptionGrammar(keep_boxes=True).advance(START_STATE, _minified(caption)) != ()


@pytest.mark.parametrize("text", [
    b'{"compositional_deconstruction":{"background":"","elements":[{"type":"obj","desc":""}]},'
    b'"high_level_description":""}',  # key order
    b'{"high_level_description": ""}',  # whitespace
    b'{"high_level_description":"a\\u00e9"}',  # \\u escapes
    b'{"high_level_description":"tab\there"}',  # raw control character
    b'{"high_level_description":"\xc3"}',  # a string closed inside a UTF-8 character
    b'{"high_level_description":"\xed\xa0\x80"}',  # a UTF-16 surrogate in UTF-8
])
def test_refuses_non_canonical_text(text):
    state = START_STATE
    for byte in text:
        state = CaptionGrammar(keep_boxes=True).step(state, byte)
        if state is None:
            break
    assert state is None


@pytest.mark.parametrize("keep_boxes", [False, True])
def test_random_byte_walks_always_close_into_valid_captions(keep_boxes):
    grammar = CaptionGrammar(keep_boxes)
    alphabet = list(range(0x20, 0x7F)) + [0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0x0A]
    rng = random.Random(1234)
    seen_keys = set()
    for _ in range(80):
        state, written = START_STATE, bytearray()
        for _ in range(rng.randrange(0, 300)):
            # Uniform over the distinct next states (all plain string bytes lead to one), so walks leave strings.
            options = {}
            for byte in alphabet:
                after = grammar.step(state, byte)
                if after is not None:
                    options.setdefault(after, []).append(byte)
            if not options:
                break
            state = rng.choice(sorted(options, key=repr))
            written.append(rng.choice(options[state]))
        text = (bytes(written) + grammar.completion(state)).decode("utf-8")
        report = validate_caption(text)
        assert report.ok, (text, report.summary())
        assert text == json.dumps(report.caption, separators=(",", ":"), ensure_ascii=False) or "\\/" in text
        seen_keys |= set(report.caption) | set(report.caption.get("style_description", {}))
        for element in report.caption["compositional_deconstruction"]["elements"]:
            seen_keys |= set(element)
    # The walks reach every part of the schema, not just the shortest caption.
    expected = {"style_description", "photo", "art_style", "color_palette", "text", "desc"}
    assert expected | ({"bbox"} if keep_boxes else set()) <= seen_keys
    assert keep_boxes or "bbox" not in seen_keys


def test_completion_is_the_shortest_caption_and_empty_when_complete():
    grammar = CaptionGrammar()
    shortest = grammar.completion(START_STATE)
    assert shortest == (b'{"high_level_description":"","compositional_deconstruction":{"background":"","elements":'
                        b'[{"type":"obj","desc":""}]}}')
    assert grammar.completion(grammar.advance(START_STATE, shortest)) == b""
    # Inside a box: the closing picks the smallest numbers that keep max above min.
    boxes = CaptionGrammar(keep_boxes=True)
    prefix = b'{"high_level_description":"","compositional_deconstruction":{"background":"","elements":[{"type":"obj","bbox":[7,99'
    assert boxes.completion(boxes.advance(START_STATE, prefix)).startswith(b',8,100],"desc":""}')



def test_the_automatons_key_orders_are_the_validators():
    # The automaton spells its schemas out; the validator's key orders (ideogram4.caption) are the one source:
    # each full order is one of the automaton's key sequences, and every sequence keeps one order's key order.
    from ideogram4 import caption
    from ideogram4.caption_grammar import SCHEMAS

    def is_subsequence(short, long):
        keys = iter(long)
        return all(key in keys for key in short)

    for schema, orders in [("top", [caption.TOP_LEVEL_KEY_ORDER]),
                           ("style", [caption.STYLE_KEY_ORDER_PHOTO, caption.STYLE_KEY_ORDER_NON_PHOTO]),
                           ("composition", [caption.COMPOSITION_KEY_ORDER]),
                           ("element_with_boxes", [caption.ELEMENT_KEY_ORDER_OBJ, caption.ELEMENT_KEY_ORDER_TEXT])]:
        sequences = {tuple(key for key, _ in sequence) for sequence in SCHEMAS[schema]}
        assert set(orders) <= sequences, schema
        assert all(any(is_subsequence(sequence, order) for order in orders) for sequence in sequences), schema
