"""Parse a user-written per-step guidance schedule (sampling order: first step first), and write one.

Accepted forms (whitespace around items is ignored):

* one number — the same guidance for every step: ``"7"``;
* a comma list with one number per step: ``"7, 7, 7, 3"``;
* runs ``VALUExCOUNT`` (VALUE repeated COUNT times), optionally mixed with single numbers:
  ``"7x45,3x3"`` (the official V4_QUALITY_48 schedule), ``"7x18,3,3"``.

Guidance weights must be finite and >= 0; the total length must equal the number of steps.
"""

from __future__ import annotations

import math
import numbers
import re

# A plain decimal number; "nan"/"inf" are excluded on purpose (float() would accept them).
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_SINGLE = re.compile(rf"({_NUMBER})")
_RUN = re.compile(rf"({_NUMBER})\s*[xX×*]\s*(\d+)")


class GuidanceScheduleError(ValueError):
    """A guidance schedule string that cannot be used; the message says what was expected."""


def parse_guidance_schedule(text: str, steps: int) -> list[float]:
    """Parse ``text`` into ``steps`` guidance weights in sampling order (index 0 = first step)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise GuidanceScheduleError(f"guidance schedule: steps must be an integer >= 1, got {steps!r}.")
    steps = int(steps)
    if not isinstance(text, str):
        raise _error(text, steps, f"expected a string, got {type(text).__name__}")
    if not text.strip():
        raise _error(text, steps, "it is empty")

    items = text.split(",")
    values: list[float] = []
    for position, item in enumerate(items, start=1):
        values.extend(_parse_item(text, steps, item.strip(), position))

    if len(items) == 1 and _SINGLE.fullmatch(items[0].strip()) is not None:
        return values * steps  # one plain number: constant guidance
    if len(values) != steps:
        raise _error(text, steps, f"expects {steps} values, got {len(values)}")
    return values


def _parse_item(text: str, steps: int, item: str, position: int) -> list[float]:
    if not item:
        raise _error(text, steps, f"item {position} is empty (stray comma?)")
    run = _RUN.fullmatch(item)
    if run is not None:
        value = _checked_value(text, steps, run.group(1), position)
        count = int(run.group(2))
        if count < 1:
            raise _error(text, steps, f"item {position} {item!r} repeats a value 0 times; counts must be >= 1")
        return [value] * count
    if _SINGLE.fullmatch(item) is not None:
        return [_checked_value(text, steps, item, position)]
    if _is_non_finite_word(item):
        raise _error(text, steps, f"item {position} {item!r} is not finite; use a finite number >= 0")
    raise _error(text, steps, f"item {position} {item!r} is not a number or VALUExCOUNT run")


def _checked_value(text: str, steps: int, token: str, position: int) -> float:
    value = float(token)
    if not math.isfinite(value):  # e.g. "1e999" overflows to inf
        raise _error(text, steps, f"item {position} value {token!r} is not finite; use a finite number >= 0")
    if value < 0:
        raise _error(text, steps, f"item {position} value {token!r} is negative; guidance must be >= 0")
    return value


def _is_non_finite_word(item: str) -> bool:
    try:
        return not math.isfinite(float(item))
    except ValueError:
        return False


def _error(text: object, steps: int, problem: str) -> GuidanceScheduleError:
    if steps > 1:
        run_example = f"'7x{steps - 1},3'"
        list_example = f"{steps} comma-separated numbers, first step first (e.g. '7, 7, ..., 3')"
    else:
        run_example = "'7x1'"
        list_example = "1 number"
    return GuidanceScheduleError(
        f"Invalid guidance schedule {text!r} for {steps} step(s): {problem}. Expected one of: a single number "
        f"used for every step (e.g. '7'); {list_example}; or runs VALUExCOUNT, optionally mixed with single "
        f"numbers, whose lengths add up to {steps} (e.g. {run_example}). Values must be finite and >= 0."
    )


def format_guidance_schedule(values) -> str:
    """The run form of a guidance list, the inverse of :func:`parse_guidance_schedule`: ``[7]*18 + [3]*2`` ->
    ``"7x18,3x2"`` (whole numbers without a decimal point)."""
    runs: list[list] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return ",".join(f"{_number_text(value)}x{count}" for value, count in runs)


def _number_text(value: float) -> str:
    """Whole numbers without a decimal point; others exactly (repr), so the parser reads back the same float."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
