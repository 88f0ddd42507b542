"""Caption checks against the rules of the official prompting guide / caption verifier (spec §F.1).

The expected paths and key words are written by hand from those rules; every broken caption differs from a valid
one in exactly one place, so each must produce exactly one problem at exactly that path.
"""

import copy
import json

import pytest

from ideogram4.caption import (
    CaptionProblem,
    canonicalize_prompt,
    serialize_caption,
    prompt_text_problem,
    validate_caption,
    validate_caption_object,
)

PHOTO_CAPTION = {
    "high_level_description": "A lighthouse on a rocky cliff at dusk, waves breaking below.",
    "style_description": {
        "aesthetics": "moody, cinematic, desaturated",
        "lighting": "blue hour, lighthouse beam as the key light",
        "photo": "35mm, f/2.8, long exposure",
        "medium": "photograph",
        "color_palette": ["#1B1B2F", "#162447", "#1F4068", "#E43F5A", "#F5F5F5"],
    },
    "compositional_deconstruction": {
        "background": "A dark sea under a cloudy sky fading from navy to violet.",
        "elements": [
            {"type": "obj", "bbox": [120, 400, 880, 620], "desc": "A white lighthouse with a red lantern room."},
            {"type": "obj", "desc": "Foamy waves crashing on black rocks.", "color_palette": ["#FFFFFF", "#0A0A0A"]},
            {"type": "obj", "bbox": [600, 0, 1000, 1000], "desc": "A jagged cliff spanning the lower image."},
        ],
    },
}

ART_CAPTION = {
    "high_level_description": "A flat vector poster of a fox in an autumn forest.",
    "style_description": {
        "aesthetics": "playful, warm, geometric",
        "lighting": "flat, no shadows",
        "medium": "illustration",
        "art_style": "flat vector illustration, bold outlines",
        "color_palette": ["#FF6B35", "#F7C59F", "#004E89", "#1A659E", "#2B2D42"],
    },
    "compositional_deconstruction": {
        "background": "Stylised orange and brown trees on a cream ground.",
        "elements": [{"type": "obj", "bbox": [300, 250, 900, 750], "desc": "A sitting red fox facing left."}],
    },
}

# Text elements with bboxes, non-ASCII text, a full 16-colour style palette, 5-colour element palettes and boxes
# touching both edges of the 0-1000 range: everything at its limit, still valid.
TEXT_CAPTION = {
    "high_level_description": "Ein Café-Schild mit dem Wort „Grüße“ und japanischem Untertitel.",
    "style_description": {
        "aesthetics": "minimal, professional",
        "lighting": "even, diffuse studio lighting",
        "medium": "graphic_design",
        "art_style": "swiss typography, generous whitespace",
        "color_palette": [f"#{i:X}{i:X}{i:X}{i:X}{i:X}{i:X}" for i in range(16)],
    },
    "compositional_deconstruction": {
        "background": "A plain off-white wall.",
        "elements": [
            {"type": "text", "bbox": [0, 0, 400, 1000], "text": "Grüße", "desc": "Large bold black letters.",
             "color_palette": ["#000000", "#111111", "#222222", "#333333", "#444444"]},
            {"type": "text", "bbox": [450, 100, 550, 900], "text": "こんにちは 🌸", "desc": "Small grey subtitle."},
            {"type": "obj", "bbox": [600, 400, 1000, 600], "desc": "A potted plant."},
        ],
    },
}

VALID_CAPTIONS = {"photo": PHOTO_CAPTION, "art_style": ART_CAPTION, "text_elements": TEXT_CAPTION}


def _reordered(mapping: dict, order: list) -> dict:
    return {key: mapping[key] for key in order}


def _broken(base: dict, change) -> str:
    """``change`` edits a copy of ``base`` in place (its return value is ignored)."""
    caption = copy.deepcopy(base)
    change(caption)
    return serialize_caption(caption)


def _rebuilt(base: dict, build) -> str:
    """``build`` returns a new caption made from a copy of ``base``."""
    return serialize_caption(build(copy.deepcopy(base)))


def _elements(caption: dict) -> list:
    return caption["compositional_deconstruction"]["elements"]


CD = "$.compositional_deconstruction"
SD = "$.style_description"

# (id, prompt, expected path, words that must appear in the problem text)
BROKEN_CAPTIONS = [
    ("missing_composition", _broken(PHOTO_CAPTION, lambda c: c.pop("compositional_deconstruction")),
     "$", ["missing required key", '"compositional_deconstruction"']),
    ("missing_background", _broken(PHOTO_CAPTION, lambda c: c["compositional_deconstruction"].pop("background")),
     CD, ["missing required key", '"background"']),
    ("missing_elements", _broken(PHOTO_CAPTION, lambda c: c["compositional_deconstruction"].pop("elements")),
     CD, ["missing required key", '"elements"']),
    ("background_not_string", _broken(PHOTO_CAPTION, lambda c: c["compositional_deconstruction"].update(background=7)),
     f"{CD}.background", ["expected a string", "7"]),
    ("elements_not_list", _broken(PHOTO_CAPTION, lambda c: c["compositional_deconstruction"].update(elements={})),
     f"{CD}.elements", ["expected a list"]),
    ("top_level_order", _rebuilt(PHOTO_CAPTION, lambda c: _reordered(
        c, ["high_level_description", "compositional_deconstruction", "style_description"])),
     "$", ["order", "expected high_level_description, style_description, compositional_deconstruction"]),
    ("style_photo_and_art_style", _broken(PHOTO_CAPTION, lambda c: c["style_description"].update(art_style="x")),
     SD, ['both "photo" and "art_style"', "exactly one"]),
    ("style_neither_photo_nor_art_style", _broken(PHOTO_CAPTION, lambda c: c["style_description"].pop("photo")),
     SD, ['"photo"', '"art_style"', "exactly one"]),
    ("photo_style_order", _broken(PHOTO_CAPTION, lambda c: c.update(style_description=_reordered(
        c["style_description"], ["aesthetics", "photo", "lighting", "medium", "color_palette"]))),
     SD, ["order", "expected aesthetics, lighting, photo, medium, color_palette"]),
    ("art_style_order_uses_photo_order", _broken(ART_CAPTION, lambda c: c.update(style_description=_reordered(
        c["style_description"], ["aesthetics", "lighting", "art_style", "medium", "color_palette"]))),
     SD, ["order", "expected aesthetics, lighting, medium, art_style, color_palette"]),
    ("style_palette_not_last", _broken(ART_CAPTION, lambda c: c.update(style_description=_reordered(
        c["style_description"], ["color_palette", "aesthetics", "lighting", "medium", "art_style"]))),
     SD, ["order", "expected aesthetics, lighting, medium, art_style, color_palette"]),
    ("style_missing_lighting", _broken(PHOTO_CAPTION, lambda c: c["style_description"].pop("lighting")),
     SD, ["missing required key", '"lighting"']),
    ("unknown_style_key", _broken(PHOTO_CAPTION, lambda c: c["style_description"].update(mood="calm")),
     f"{SD}.mood", ["unknown key", '"mood"']),
    ("element_order", _broken(PHOTO_CAPTION, lambda c: _elements(c).__setitem__(
        0, _reordered(_elements(c)[0], ["type", "desc", "bbox"]))),
     f"{CD}.elements[0]", ["order", "type, desc, bbox", "expected type, bbox, desc"]),
    ("text_element_order", _broken(TEXT_CAPTION, lambda c: _elements(c).__setitem__(
        1, _reordered(_elements(c)[1], ["type", "bbox", "desc", "text"]))),
     f"{CD}.elements[1]", ["order", "expected type, bbox, text, desc"]),
    ("bbox_value_out_of_range", _broken(TEXT_CAPTION, lambda c: _elements(c)[2]["bbox"].__setitem__(1, 1200)),
     f"{CD}.elements[2].bbox[1]", ["expected an integer 0-1000, got 1200"]),
    ("bbox_negative", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0]["bbox"].__setitem__(0, -5)),
     f"{CD}.elements[0].bbox[0]", ["expected an integer 0-1000, got -5"]),
    ("bbox_float", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0]["bbox"].__setitem__(2, 0.88)),
     f"{CD}.elements[0].bbox[2]", ["expected an integer 0-1000, got 0.88", "0-1000 grid"]),
    ("bbox_bool", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0]["bbox"].__setitem__(3, True)),
     f"{CD}.elements[0].bbox[3]", ["expected an integer 0-1000, got true"]),
    ("bbox_three_values", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0]["bbox"].pop()),
     f"{CD}.elements[0].bbox", ["expected 4 integers", "[y_min, x_min, y_max, x_max]", "3 value"]),
    ("bbox_not_list", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0].update(bbox="10,20,30,40")),
     f"{CD}.elements[0].bbox", ["expected a list", "[y_min, x_min, y_max, x_max]"]),
    ("bbox_y_min_above_y_max", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0].update(bbox=[880, 400, 120, 620])),
     f"{CD}.elements[0].bbox", ["y_min (880) must be less than y_max (120)"]),
    ("bbox_zero_width", _broken(PHOTO_CAPTION, lambda c: _elements(c)[0].update(bbox=[120, 400, 880, 400])),
     f"{CD}.elements[0].bbox", ["x_min (400) must be less than x_max (400)", "zero width"]),
    ("colour_lowercase", _broken(PHOTO_CAPTION, lambda c: c["style_description"]["color_palette"].__setitem__(
        3, "#e43f5a")),
     f"{SD}.color_palette[3]", ['uppercase "#RRGGBB"', '"#e43f5a"', '"#E43F5A"']),
    ("colour_shorthand", _broken(PHOTO_CAPTION, lambda c: _elements(c)[1]["color_palette"].__setitem__(0, "#fff")),
     f"{CD}.elements[1].color_palette[0]", ['uppercase "#RRGGBB"', "shorthand", '"#FFFFFF"']),
    ("colour_without_hash", _broken(ART_CAPTION, lambda c: c["style_description"]["color_palette"].__setitem__(
        0, "FF6B35")),
     f"{SD}.color_palette[0]", ['"#RRGGBB"', '"#FF6B35"']),
    ("style_palette_17_colours", _broken(TEXT_CAPTION, lambda c: c["style_description"]["color_palette"].append(
        "#ABCDEF")),
     f"{SD}.color_palette", ["17 colours", "at most 16"]),
    ("element_palette_6_colours", _broken(TEXT_CAPTION, lambda c: _elements(c)[0]["color_palette"].append(
        "#555555")),
     f"{CD}.elements[0].color_palette", ["6 colours", "at most 5"]),
    ("element_type_unknown", _broken(PHOTO_CAPTION, lambda c: _elements(c)[2].update(type="image")),
     f"{CD}.elements[2].type", ['expected "obj" or "text"', '"image"']),
    ("element_missing_type", _broken(ART_CAPTION, lambda c: _elements(c)[0].pop("type")),
     f"{CD}.elements[0]", ["missing required key", '"type"']),
    ("element_missing_desc", _broken(ART_CAPTION, lambda c: _elements(c)[0].pop("desc")),
     f"{CD}.elements[0]", ["missing required key", '"desc"']),
    ("text_element_without_text", _broken(TEXT_CAPTION, lambda c: _elements(c)[0].pop("text")),
     f"{CD}.elements[0]", ["missing required key", '"text"']),
    ("obj_element_with_text", _broken(PHOTO_CAPTION, lambda c: _elements(c).__setitem__(
        0, {"type": "obj", "bbox": [120, 400, 880, 620], "text": "EXIT", "desc": "A sign."})),
     f"{CD}.elements[0].text", ['"text" is only allowed in elements of type "text"']),
    ("desc_not_string", _broken(PHOTO_CAPTION, lambda c: _elements(c)[1].update(desc=["waves"])),
     f"{CD}.elements[1].desc", ["expected a string", "a list"]),
    ("unknown_top_level_key", _broken(PHOTO_CAPTION, lambda c: c.update(aspect_ratio="16:9")),
     "$.aspect_ratio", ["unknown key", '"aspect_ratio"']),
    ("misspelt_element_key", _broken(PHOTO_CAPTION, lambda c: _elements(c)[1].update(
        colour_palette=_elements(c)[1].pop("color_palette"))),
     f"{CD}.elements[1].colour_palette", ["unknown key", 'did you mean "color_palette"']),
    ("duplicate_key",
     '{"high_level_description":"a","compositional_deconstruction":{"background":"b","elements":['
     '{"type":"obj","desc":"one","desc":"two"}]}}',
     f"{CD}.elements[0].desc", ['"desc" appears more than once']),
    ("invalid_json_trailing_comma",
     '{\n  "high_level_description": "a",\n  "compositional_deconstruction": {"background": "b", "elements": [],}\n}',
     # line 3 is '  "compositional_deconstruction": {"background": "b", "elements": [],}': the "}" after the
     # trailing comma is character 70, where a property name was expected.
     "$", ["not valid JSON", "line 3, column 70"]),
]


@pytest.mark.parametrize(
    "prompt, path, words", [case[1:] for case in BROKEN_CAPTIONS], ids=[case[0] for case in BROKEN_CAPTIONS]
)
def test_each_broken_caption_gives_one_problem_at_its_path(prompt, path, words):
    report = validate_caption(prompt)

    assert report.kind == "json"
    assert len(report.problems) == 1, report.summary()
    problem = report.problems[0]
    assert problem.path == path, report.summary()
    for word in words:
        assert word in str(problem), report.summary()
    assert problem.hint, "every problem says what to do"


def test_problem_text_reads_path_colon_message_then_what_to_do():
    prompt = _broken(TEXT_CAPTION, lambda c: _elements(c)[2]["bbox"].__setitem__(1, 1200))

    text = str(validate_caption(prompt).problems[0])

    assert text.startswith(
        "$.compositional_deconstruction.elements[2].bbox[1]: expected an integer 0-1000, got 1200. What to do: "
    )


@pytest.mark.parametrize("name", VALID_CAPTIONS)
def test_valid_captions_have_no_problems_and_no_warnings(name):
    report = validate_caption(serialize_caption(VALID_CAPTIONS[name]))

    assert report.kind == "json"
    assert report.problems == [], report.summary()
    assert report.warnings == []
    assert report.caption == VALID_CAPTIONS[name]
    assert report.ok
    assert validate_caption_object(VALID_CAPTIONS[name]) == []


def test_minimal_caption_passes_with_a_high_level_description_warning():
    report = validate_caption('{"compositional_deconstruction":{"background":"An empty beach.","elements":[]}}')

    assert report.problems == []
    assert len(report.warnings) == 1 and '"high_level_description"' in report.warnings[0]


def test_pretty_printed_caption_is_checked_like_the_minified_one():
    report = validate_caption("\n  " + json.dumps(PHOTO_CAPTION, indent=2))

    assert report.kind == "json" and report.problems == []


@pytest.mark.parametrize("prompt", ["a red fox in an autumn forest", "  [not a caption] a fox", "fox {curly}"])
def test_plain_text_is_allowed_with_a_warning(prompt):
    report = validate_caption(prompt)

    assert report.kind == "plain"
    assert report.problems == []
    assert len(report.warnings) == 1
    assert "trained on JSON captions" in report.warnings[0]
    assert report.caption is None


def test_empty_prompt_is_plain_text_with_its_own_warning():
    report = validate_caption("   ")

    assert report.kind == "plain" and report.problems == [] and report.warnings == ["the prompt is empty"]


def test_escaped_non_ascii_warns_and_literal_non_ascii_does_not():
    caption = {"compositional_deconstruction": {"background": "Café", "elements": []}}
    escaped = json.dumps(caption, separators=(",", ":"))  # ensure_ascii=True writes Caf\u00e9
    assert "\\u00e9" in escaped

    escaped_report = validate_caption(escaped)
    literal_report = validate_caption(serialize_caption(caption))

    assert escaped_report.problems == []
    assert any("\\uXXXX" in warning for warning in escaped_report.warnings)
    assert not any("\\uXXXX" in warning for warning in literal_report.warnings)


def test_non_object_root_is_a_problem_for_parsed_captions():
    problems = validate_caption_object(["not", "an", "object"])

    assert [problem.path for problem in problems] == ["$"]
    assert "expected a JSON object, got a list" in problems[0].message


def test_problems_come_in_document_order_and_do_not_cascade():
    caption = copy.deepcopy(PHOTO_CAPTION)
    caption["style_description"]["color_palette"][0] = "#abc"
    _elements(caption)[0]["bbox"] = [880, 400, 120, 1001]
    _elements(caption)[2]["type"] = "image"

    paths = [problem.path for problem in validate_caption(serialize_caption(caption)).problems]

    assert paths == [
        f"{SD}.color_palette[0]",
        f"{CD}.elements[0].bbox[3]",  # range first; y_min/y_max are compared only when all four values are valid
        f"{CD}.elements[2].type",
    ]


def test_key_with_unusual_characters_gets_a_bracket_path():
    caption = copy.deepcopy(ART_CAPTION)
    caption["style_description"]["font size"] = "12"

    problem = validate_caption(serialize_caption(caption)).problems[0]

    assert problem.path == '$.style_description["font size"]'


def test_report_summary_lists_problems_and_warnings():
    report = validate_caption('{"compositional_deconstruction":{"background":1,"elements":[]}}')

    summary = report.summary()

    assert "1 problem(s), 1 warning(s)" in summary
    assert f"- problem: {report.problems[0]}" in summary
    assert isinstance(report.problems[0], CaptionProblem)


def test_serialize_is_minified_and_keeps_non_ascii_literally():
    caption = {"a": [1, 2], "b": {"c": "Grüße 🌸"}, "d": "line\nbreak \"quoted\""}

    text = serialize_caption(caption)

    assert text == '{"a":[1,2],"b":{"c":"Grüße 🌸"},"d":"line\\nbreak \\"quoted\\""}'


@pytest.mark.parametrize("name", VALID_CAPTIONS)
def test_serialize_parse_serialize_is_stable(name):
    first = serialize_caption(VALID_CAPTIONS[name])
    second = serialize_caption(json.loads(first))

    assert second == first
    assert list(json.loads(first)) == list(VALID_CAPTIONS[name])  # key order survives the round trip


def test_serialized_text_caption_contains_its_non_ascii_characters_unescaped():
    text = serialize_caption(TEXT_CAPTION)

    for literal in ("„Grüße“", "こんにちは 🌸", "Café"):
        assert literal in text
    assert "\\u" not in text


def test_canonicalize_minifies_json_and_keeps_key_order():
    pretty = json.dumps(ART_CAPTION, indent=4, ensure_ascii=True)

    canonical = canonicalize_prompt(pretty)

    assert canonical == serialize_caption(ART_CAPTION)
    assert canonicalize_prompt(canonical) == canonical


def test_canonicalize_writes_escaped_non_ascii_literally():
    assert canonicalize_prompt('{ "t": "Caf\\u00e9 \\ud83c\\udf38" }') == '{"t":"Café 🌸"}'


def test_canonicalize_minifies_json_objects_even_with_schema_problems():
    assert canonicalize_prompt('{ "background": "no wrapper" }') == '{"background":"no wrapper"}'


@pytest.mark.parametrize(
    "prompt",
    [
        "  a fox,  in a forest \n",  # plain text: whitespace is part of the tokens, keep it
        '["json", "but", "not an object"]',
        '{"background": "broken",}',  # invalid JSON: the validator reports it, the prompt is not touched
        '{"desc": "one", "desc": "two"}',  # re-serialising would silently drop "one"
    ],
)
def test_canonicalize_leaves_everything_else_unchanged(prompt):
    assert canonicalize_prompt(prompt) == prompt


def test_element_with_unknown_type_still_reports_unknown_keys():
    caption = copy.deepcopy(ART_CAPTION)
    _elements(caption)[0] = {"type": "image", "desc": "A fox.", "layer": 2}

    problems = validate_caption(serialize_caption(caption)).problems

    assert [problem.path for problem in problems] == [f"{CD}.elements[0].type", f"{CD}.elements[0].layer"]


@pytest.mark.parametrize("prompt, says", [
    ("bad \ud800 text", "lone surrogate '\\ud800' at position 4"),
    ("a\udfffb", "lone surrogate '\\udfff' at position 1"),
    ("a red\x00wall", "NUL character (U+0000) at position 5"),
    ("", "the prompt is empty"),
    (" \n\t", "the prompt is empty"),
    (None, "must be text, got NoneType"),
])
def test_prompts_that_cannot_be_encoded_say_why(prompt, says):
    problem = prompt_text_problem(prompt)
    assert problem is not None and says in problem


@pytest.mark.parametrize("prompt", ["a cat", "日本語のテキスト", "emoji 🎨 ok", "tab\tand\nnewline"])
def test_ordinary_text_can_be_encoded(prompt):
    assert prompt_text_problem(prompt) is None


def test_bidi_control_characters_are_flagged_in_plain_and_json_prompts():
    plain = validate_caption("price \u202e01$")
    assert any("1 invisible bidirectional control character(s) (U+202E at 6)" in w for w in plain.warnings)
    caption = '{"high_level_description":"a \u2066sign\u2069","compositional_deconstruction":' \
              '{"background":"a wall","elements":[]}}'
    report = validate_caption(caption)
    assert any("2 invisible bidirectional control character(s) (U+2066 at 29, U+2069 at 34)" in w
               for w in report.warnings), report.warnings
    assert not any("bidirectional" in w for w in validate_caption("a plain prompt").warnings)
