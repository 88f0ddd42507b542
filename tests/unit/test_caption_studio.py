"""The caption editor's server side: the validation route's answers and the Caption node's state."""

import copy
import json

import pytest

from ideogram4.caption_studio import CaptionStateError, caption_of_state, check_request, editor_options, parse_state
from ideogram4.guidance import format_guidance_schedule, parse_guidance_schedule
from ideogram4.presets import PRESETS

VALID = {
    "high_level_description": "A café sign reading \"OPEN\".",
    "style_description": {"aesthetics": "warm", "lighting": "soft daylight", "photo": "50mm lens",
                          "medium": "photograph", "color_palette": ["#112233", "#AABBCC"]},
    "compositional_deconstruction": {
        "background": "a street",
        "elements": [{"type": "text", "bbox": [100, 200, 300, 800], "text": "OPEN", "desc": "red letters",
                      "color_palette": ["#FF0000"]},
                     {"type": "obj", "desc": "a door"}],
    },
}
# Written by hand: minified, literal non-ASCII, keys in schema order.
VALID_CANONICAL = (
    '{"high_level_description":"A café sign reading \\"OPEN\\".","style_description":{"aesthetics":"warm",'
    '"lighting":"soft daylight","photo":"50mm lens","medium":"photograph","color_palette":["#112233","#AABBCC"]},'
    '"compositional_deconstruction":{"background":"a street","elements":[{"type":"text","bbox":[100,200,300,800],'
    '"text":"OPEN","desc":"red letters","color_palette":["#FF0000"]},{"type":"obj","desc":"a door"}]}}'
)


def edited(change):
    caption = copy.deepcopy(VALID)
    change(caption)
    return caption


def paths(answer):
    return [problem["path"] for problem in answer["problems"]]


def test_valid_caption_answers_ok_with_the_canonical_form():
    answer = check_request({"caption": VALID})
    assert answer["ok"] and answer["problems"] == []
    assert answer["canonical"] == VALID_CANONICAL


def test_valid_caption_as_text_answers_the_same_canonical_form():
    answer = check_request({"text": json.dumps(VALID, indent=2)})
    assert answer["ok"], answer["problems"]
    assert answer["canonical"] == VALID_CANONICAL


def test_bad_key_order_is_reported_at_its_object():
    def swap(caption):
        element = caption["compositional_deconstruction"]["elements"][0]
        caption["compositional_deconstruction"]["elements"][0] = {key: element[key] for key in
                                                                   ("type", "text", "bbox", "desc", "color_palette")}
    answer = check_request({"caption": edited(swap)})
    assert paths(answer) == ["$.compositional_deconstruction.elements[0]"]
    assert "order" in answer["problems"][0]["message"]


def test_paste_puts_keys_in_canonical_order():
    shuffled = {"compositional_deconstruction": {"elements": [{"desc": "a door", "type": "obj"}], "background": "a street"},
                "high_level_description": "x"}
    answer = check_request({"text": json.dumps(shuffled), "reorder": True})
    assert answer["ok"], answer["problems"]
    assert answer["canonical"] == ('{"high_level_description":"x","compositional_deconstruction":{"background":'
                                   '"a street","elements":[{"type":"obj","desc":"a door"}]}}')
    assert not check_request({"text": json.dumps(shuffled)})["ok"]  # without reorder the order is checked


@pytest.mark.parametrize("bbox, bad_path", [
    ([100, 200, 300, 1001], "$.compositional_deconstruction.elements[0].bbox[3]"),
    ([-1, 200, 300, 800], "$.compositional_deconstruction.elements[0].bbox[0]"),
    ([300, 200, 100, 800], "$.compositional_deconstruction.elements[0].bbox"),
    ([100, 800, 300, 200], "$.compositional_deconstruction.elements[0].bbox"),
])
def test_bbox_outside_the_grid_or_inverted(bbox, bad_path):
    def set_box(caption):
        caption["compositional_deconstruction"]["elements"][0]["bbox"] = bbox
    assert paths(check_request({"caption": edited(set_box)})) == [bad_path]


def test_photo_and_art_style_together():
    def both(caption):
        caption["style_description"]["art_style"] = "watercolour"
    answer = check_request({"caption": edited(both)})
    assert paths(answer) == ["$.style_description"]
    assert "both" in answer["problems"][0]["message"]


def test_palette_colour_not_rrggbb():
    def lower(caption):
        caption["style_description"]["color_palette"][1] = "#aabbcc"
        caption["compositional_deconstruction"]["elements"][0]["color_palette"] = ["red"]
    assert paths(check_request({"caption": edited(lower)})) == [
        "$.style_description.color_palette[1]", "$.compositional_deconstruction.elements[0].color_palette[0]"]


def test_too_many_colours():
    def many(caption):
        caption["compositional_deconstruction"]["elements"][0]["color_palette"] = ["#000000"] * 6
        caption["style_description"]["color_palette"] = ["#FFFFFF"] * 17
    answer = check_request({"caption": edited(many)})
    assert paths(answer) == ["$.style_description.color_palette",
                             "$.compositional_deconstruction.elements[0].color_palette"]
    assert "17 colours" in answer["problems"][0]["message"] and "6 colours" in answer["problems"][1]["message"]


def test_missing_background():
    def drop(caption):
        del caption["compositional_deconstruction"]["background"]
    answer = check_request({"caption": edited(drop)})
    assert paths(answer) == ["$.compositional_deconstruction"]
    assert '"background"' in answer["problems"][0]["message"]


@pytest.mark.parametrize("body", [None, [], {}, {"caption": {}, "text": "{}"}, {"text": 3}, {"text": "plain words"}])
def test_malformed_requests_get_an_error_answer(body):
    answer = check_request(body)
    assert not answer["ok"] and paths(answer) == ["$"] and answer["canonical"] is None


def test_broken_json_text_reports_the_syntax_error():
    answer = check_request({"text": '{"high_level_description": "x",}'})
    assert paths(answer) == ["$"] and "not valid JSON" in answer["problems"][0]["message"]
    assert answer["caption"] is None


def test_state_gives_caption_and_frame():
    state = json.dumps({"width": 1536, "height": 1024, "caption": VALID})
    assert caption_of_state(state) == (VALID_CANONICAL, 1536, 1024)


@pytest.mark.parametrize("state, words", [
    ("not json", "not valid JSON"),
    ('{"width": 1000, "height": 1024, "caption": {}}', '"width" 1000'),
    ('{"width": 1024, "height": 4096, "caption": {}}', '"height" 4096'),
    ('{"width": 1024, "height": 1024}', '"caption"'),
])
def test_malformed_state_is_refused_with_the_node_and_input_named(state, words):
    with pytest.raises(CaptionStateError, match="Ideogram 4 Caption: the state input") as error:
        parse_state(state)
    assert words in str(error.value)


def test_state_with_a_rule_broken_lists_the_problem_paths():
    caption = edited(lambda c: c["compositional_deconstruction"].pop("background"))
    with pytest.raises(CaptionStateError, match=r"\$\.compositional_deconstruction: missing required key"):
        caption_of_state(json.dumps({"width": 1024, "height": 1024, "caption": caption}))


def test_preset_values_for_the_web_round_trip_through_the_guidance_parser():
    options = editor_options({"Turbo 12": PRESETS["V4_TURBO_12"]}, "Custom")
    turbo = options["presets"]["Turbo 12"]
    assert (turbo["steps"], turbo["mu"], turbo["std"], turbo["guidance_schedule"]) == (12, 0.5, 1.75, "7x11,3x1")
    assert parse_guidance_schedule(turbo["guidance_schedule"], 12) == list(PRESETS["V4_TURBO_12"].guidance)
    assert format_guidance_schedule([7.5, 7.5, 3.0]) == "7.5x2,3x1"
