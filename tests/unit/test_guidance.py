"""Preset guidance lists (sampling order vs the official loop-index order) and the guidance schedule parser."""

import pytest

from ideogram4.guidance import GuidanceScheduleError, format_guidance_schedule, parse_guidance_schedule
from ideogram4.presets import PRESETS, V4_DEFAULT_20, V4_QUALITY_48, V4_TURBO_12, SamplerPreset

# As written in the official sampler_configs.py (loop-index order: index 0 = last step), spec §D.4/D.5.
OFFICIAL_LOOP_INDEX_GUIDANCE = {
    "V4_QUALITY_48": (3.0,) * 3 + (7.0,) * 45,
    "V4_DEFAULT_20": (3.0,) * 2 + (7.0,) * 18,
    "V4_TURBO_12": (3.0,) * 1 + (7.0,) * 11,
}


@pytest.mark.parametrize(
    "preset, steps, mu, std, main, polish",
    [(V4_QUALITY_48, 48, 0.0, 1.5, 45, 3), (V4_DEFAULT_20, 20, 0.0, 1.75, 18, 2), (V4_TURBO_12, 12, 0.5, 1.75, 11, 1)],
    ids=lambda p: p.name if isinstance(p, SamplerPreset) else None,
)
def test_presets_match_spec_in_sampling_order(preset, steps, mu, std, main, polish):
    assert (preset.steps, preset.mu, preset.std) == (steps, mu, std)
    assert preset.guidance == (7.0,) * main + (3.0,) * polish  # first step first
    # The official loop runs i = steps-1 .. 0: its index 0 is our last step.
    assert tuple(reversed(OFFICIAL_LOOP_INDEX_GUIDANCE[preset.name])) == preset.guidance
    assert PRESETS[preset.name] is preset


def test_presets_registry_holds_exactly_the_official_presets():
    assert set(PRESETS) == {"V4_QUALITY_48", "V4_DEFAULT_20", "V4_TURBO_12"}


def test_preset_rejects_guidance_of_wrong_length():
    with pytest.raises(ValueError, match="guidance has 2 entries, expected one per step"):
        SamplerPreset("bad", "Bad", steps=3, mu=0.0, std=1.0, guidance=(7.0, 3.0))


@pytest.mark.parametrize(
    "text, steps, expected",
    [
        ("7", 4, [7.0] * 4),
        (" 4.5 ", 3, [4.5] * 3),
        ("0", 2, [0.0, 0.0]),
        ("7, 7, 5, 3", 4, [7.0, 7.0, 5.0, 3.0]),
        ("7x45,3x3", 48, list(V4_QUALITY_48.guidance)),
        ("7x18,3,3", 20, list(V4_DEFAULT_20.guidance)),
        ("7 x 11 , 3", 12, list(V4_TURBO_12.guidance)),
        ("7X2,3*1,2.5×1", 4, [7.0, 7.0, 3.0, 2.5]),
        ("7x1", 1, [7.0]),
        ("7x3", 3, [7.0] * 3),
        ("1e1,.5", 2, [10.0, 0.5]),
    ],
)
def test_parser_accepts(text, steps, expected):
    assert parse_guidance_schedule(text, steps) == expected


@pytest.mark.parametrize(
    "text, steps, problem",
    [
        ("7x18,3", 20, "expects 20 values, got 19"),
        ("7," * 18 + "3", 20, "expects 20 values, got 19"),
        ("7x45,3x4", 48, "expects 48 values, got 49"),
        ("7x1", 4, "expects 4 values, got 1"),  # a run of one is not broadcast
        ("7,-3", 2, "is negative"),
        ("-7", 2, "is negative"),
        ("nan", 2, "is not finite"),
        ("7,inf", 2, "is not finite"),
        ("1e999", 2, "is not finite"),
        ("", 2, "it is empty"),
        ("   ", 2, "it is empty"),
        ("7,,3", 3, "item 2 is empty"),
        ("7,3,", 2, "item 3 is empty"),
        ("seven", 2, "is not a number"),
        ("7x", 2, "is not a number"),
        ("x3", 2, "is not a number"),
        ("7x2.5", 2, "is not a number"),
        ("7x0,3x2", 2, "repeats a value 0 times"),
        ("7;3", 2, "is not a number"),
    ],
)
def test_parser_rejects_with_expected_forms_in_message(text, steps, problem):
    with pytest.raises(GuidanceScheduleError) as excinfo:
        parse_guidance_schedule(text, steps)
    message = str(excinfo.value)
    assert problem in message
    assert "Expected one of: a single number" in message and "VALUExCOUNT" in message
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize("steps", [0, -1, 2.0, True])
def test_parser_rejects_bad_step_count(steps):
    with pytest.raises(GuidanceScheduleError, match="steps must be an integer >= 1"):
        parse_guidance_schedule("7", steps)


@pytest.mark.parametrize("guidance, text", [
    (V4_QUALITY_48.guidance, "7x45,3x3"),
    (V4_TURBO_12.guidance, "7x11,3x1"),
    ((4.5, 4.5, 7.0, 0.0), "4.5x2,7x1,0x1"),
    ((7.0, 3.0, 7.0), "7x1,3x1,7x1"),
    ((0.1, 0.1), "0.1x2"),
])
def test_formatted_schedule_reads_back_as_the_same_list(guidance, text):
    assert format_guidance_schedule(guidance) == text
    assert parse_guidance_schedule(text, len(guidance)) == list(guidance)
