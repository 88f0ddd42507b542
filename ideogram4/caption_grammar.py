"""The Ideogram 4 caption schema as a byte-level automaton, for constrained decoding (spec §F.1).

:class:`CaptionGrammar` accepts exactly the canonical minified captions the pack's validator
(:func:`ideogram4.caption.validate_caption`) passes without a problem, restricted to the form an enhancer should
write: no whitespace, keys in the canonical order, ``high_level_description`` always present, at least one
element, palettes of 1-16 (style) or 1-5 (element) uppercase ``#RRGGBB`` colours, boxes as four integers
0-1000 with ``y_min < y_max`` and ``x_min < x_max`` (only when ``keep_boxes``), strings with literal UTF-8 and
the escapes ``\\" \\\\ \\/ \\n \\t`` (no ``\\uXXXX``: the model was trained on literal characters).

It works on bytes, not characters, because Qwen's byte-level BPE tokens may end or start inside a multi-byte
UTF-8 character; inside strings the automaton tracks the UTF-8 sequence so a string can only close on a
character boundary.

A state is an immutable tuple of frames (outermost first), so states can key caches. :meth:`CaptionGrammar.step`
advances a state by one byte (``None`` = the byte is not allowed); :meth:`CaptionGrammar.completion` gives the
shortest bytes that turn a state into a complete caption (what a decoder whose budget runs out appends).
Frames:

* ``("start",)``: nothing written yet;
* ``("obj", schema, done, phase, key_prefix)``: inside an object; ``done`` = ((key, enum value or None), ...);
  phase ``open`` (after ``{``), ``key`` (inside a key string), ``colon``, ``value``, ``child`` (a value frame is
  above), ``after`` (after a value), ``comma``;
* ``("arr", kind, count, phase, values)``: inside an array of ``elements``, ``palette16``, ``palette5`` or
  ``bbox`` (``values`` = the box integers so far); phases ``open``, ``child``, ``after``, ``comma``;
* ``("free", sub)``: inside a free-text string; sub ``None``, ``"esc"`` (after a backslash) or
  ``(bytes_needed, low, high)`` inside a UTF-8 sequence (the next byte must lie in low..high);
* ``("enum", options, prefix)``, ``("colour", chars_written)``, ``("num", digits, low, high)``.

The complete caption is the empty tuple.
"""

from __future__ import annotations

import functools

from .caption import BBOX_MAX, ELEMENT_PALETTE_MAX, STYLE_PALETTE_MAX

START_STATE = (("start",),)
COMPLETE_STATE = ()

_STRING = ("str",)
_COLOUR = ("colour",)
_ALLOWED_ESCAPES = frozenset(b'"\\/nt')
_DIGITS = frozenset(b"0123456789")
_HEX_UPPER = frozenset(b"0123456789ABCDEF")


def _variants(*entries):
    """All key sequences of one object: entries are (key, value spec, optional); each optional entry is either
    present or absent, in the given (canonical) order."""
    sequences = [()]
    for key, spec, optional in entries:
        with_entry = [sequence + ((key, spec),) for sequence in sequences]
        sequences = with_entry + sequences if optional else with_entry
    return tuple(sequences)


def _element_variants(keep_boxes: bool):
    bbox = [("bbox", ("arr", "bbox"), True)] if keep_boxes else []
    palette = ("color_palette", ("arr", "palette5"), True)
    obj = _variants(("type", ("enum", ("obj",)), False), *bbox, ("desc", _STRING, False), palette)
    text = _variants(("type", ("enum", ("text",)), False), *bbox, ("text", _STRING, False), ("desc", _STRING, False),
                     palette)
    return obj + text


# Object schemas: name -> every allowed key sequence with the value spec of each key. The key orders are
# ideogram4.caption's (TOP_LEVEL_KEY_ORDER, STYLE_KEY_ORDER_*, COMPOSITION_KEY_ORDER, ELEMENT_KEY_ORDER_*).
_STYLE_PALETTE = ("color_palette", ("arr", "palette16"), True)
SCHEMAS = {
    "top": _variants(("high_level_description", _STRING, False), ("style_description", ("obj", "style"), True),
                     ("compositional_deconstruction", ("obj", "composition"), False)),
    "style": _variants(("aesthetics", _STRING, False), ("lighting", _STRING, False), ("photo", _STRING, False),
                       ("medium", _STRING, False), _STYLE_PALETTE)
    + _variants(("aesthetics", _STRING, False), ("lighting", _STRING, False), ("medium", _STRING, False),
                ("art_style", _STRING, False), _STYLE_PALETTE),
    "composition": _variants(("background", _STRING, False), ("elements", ("arr", "elements"), False)),
    "element": _element_variants(keep_boxes=False),
    "element_with_boxes": _element_variants(keep_boxes=True),
}
# kind -> (minimum items, maximum items or None)
_ARRAY_SIZES = {"elements": (1, None), "palette16": (1, STYLE_PALETTE_MAX), "palette5": (1, ELEMENT_PALETTE_MAX),
                "bbox": (4, 4)}


@functools.lru_cache(maxsize=None)
def _compatible(schema: str, done: tuple) -> tuple:
    """The key sequences of ``schema`` that start with the keys (and enum values) written so far."""
    found = []
    for variant in SCHEMAS[schema]:
        if len(variant) < len(done):
            continue
        if all(key == v_key and (value is None or spec == ("enum", (value,)))
               for (key, value), (v_key, spec) in zip(done, variant)):
            found.append(variant)
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _next_keys(schema: str, done: tuple) -> frozenset:
    return frozenset(v[len(done)][0] for v in _compatible(schema, done) if len(v) > len(done))


@functools.lru_cache(maxsize=None)
def _can_close(schema: str, done: tuple) -> bool:
    return any(len(v) == len(done) for v in _compatible(schema, done))


@functools.lru_cache(maxsize=None)
def _value_spec(schema: str, done: tuple) -> tuple:
    """Spec of the value of the last key in ``done``; enum options are merged over the compatible variants."""
    specs = {v[len(done) - 1][1] for v in _compatible(schema, done)}
    if all(spec[0] == "enum" for spec in specs):
        return ("enum", tuple(sorted(option for spec in specs for option in spec[1])))
    (spec,) = specs
    return spec


def _utf8_lead(byte: int):
    """The sub-state after the lead byte of a multi-byte UTF-8 character, or None if it cannot lead one."""
    if 0xC2 <= byte <= 0xDF:
        return (1, 0x80, 0xBF)
    if byte == 0xE0:
        return (2, 0xA0, 0xBF)
    if byte == 0xED:
        return (2, 0x80, 0x9F)
    if 0xE1 <= byte <= 0xEF:
        return (2, 0x80, 0xBF)
    if byte == 0xF0:
        return (3, 0x90, 0xBF)
    if 0xF1 <= byte <= 0xF3:
        return (3, 0x80, 0xBF)
    if byte == 0xF4:
        return (3, 0x80, 0x8F)
    return None


def _number_viable(digits: str, low: int, high: int) -> bool:
    """True if some integer in low..high is written with these leading digits (JSON: no leading zeros)."""
    if len(digits) > 1 and digits[0] == "0":
        return False
    if digits == "0":
        return low <= 0 <= high
    value = int(digits)
    for extra in range(0, len(str(BBOX_MAX)) - len(digits) + 1):
        first = value * 10**extra
        if first <= high and first + 10**extra - 1 >= low:
            return True
    return False


def _smallest_number(digits: str, low: int, high: int) -> str:
    """The shortest (then smallest) number in low..high written with the leading ``digits``."""
    if not digits:
        return str(low)
    if digits == "0":
        return "0"
    value = int(digits)
    for extra in range(0, len(str(BBOX_MAX)) - len(digits) + 1):
        first = value * 10**extra
        candidate = max(first, low)
        if candidate <= min(high, first + 10**extra - 1):
            return str(candidate)
    raise ValueError(f"no number in {low}..{high} starts with {digits}")


def _bbox_range(values: tuple) -> tuple[int, int]:
    """Allowed range of the next box integer ([y_min, x_min, y_max, x_max], each max above its min)."""
    index = len(values)
    if index < 2:
        return 0, BBOX_MAX - 1
    return values[index - 2] + 1, BBOX_MAX


class CaptionGrammar:
    """The caption automaton (see the module docstring). ``keep_boxes``: elements may carry a ``bbox``."""

    def __init__(self, keep_boxes: bool = False):
        self.keep_boxes = keep_boxes
        self._element_schema = "element_with_boxes" if keep_boxes else "element"

    # -- stepping -------------------------------------------------------------------------------------------

    def step(self, state: tuple, byte: int):
        """The state after one more byte, or None if the byte cannot continue a caption from ``state``."""
        if not state:
            return None
        top = state[-1]
        kind = top[0]
        if kind == "free":
            return self._step_free(state, top[1], byte)
        if kind == "obj":
            return self._step_object(state, top, byte)
        if kind == "arr":
            return self._step_array(state, top, byte)
        if kind == "num":
            return self._step_number(state, top, byte)
        if kind == "enum":
            _, options, prefix = top
            if byte == 0x22:
                return self._finish_value(state[:-1], prefix) if prefix in options else None
            extended = prefix + chr(byte)
            if any(option.startswith(extended) for option in options):
                return state[:-1] + (("enum", options, extended),)
            return None
        if kind == "colour":
            written = top[1]
            if (written == 0 and byte == 0x23) or (1 <= written <= 6 and byte in _HEX_UPPER):
                return state[:-1] + (("colour", written + 1),)
            if written == 7 and byte == 0x22:
                return self._finish_value(state[:-1], None)
            return None
        if kind == "start":
            return (("obj", "top", (), "open", ""),) if byte == 0x7B else None
        raise AssertionError(f"unknown frame {top!r}")

    def advance(self, state: tuple, data: bytes):
        """The state after ``data``, or None as soon as a byte is not allowed."""
        for byte in data:
            state = self.step(state, byte)
            if state is None:
                return None
        return state

    @staticmethod
    def is_complete(state: tuple) -> bool:
        return state == COMPLETE_STATE

    def _step_free(self, state, sub, byte):
        if sub is None:
            if byte == 0x22:
                return self._finish_value(state[:-1], None)
            if byte == 0x5C:
                return state[:-1] + (("free", "esc"),)
            if byte < 0x20:
                return None
            if byte < 0x80:
                return state
            lead = _utf8_lead(byte)
            return None if lead is None else state[:-1] + (("free", lead),)
        if sub == "esc":
            return state[:-1] + (("free", None),) if byte in _ALLOWED_ESCAPES else None
        needed, low, high = sub
        if not low <= byte <= high:
            return None
        return state[:-1] + (("free", None if needed == 1 else (needed - 1, 0x80, 0xBF)),)

    def _step_object(self, state, top, byte):
        _, schema, done, phase, key_prefix = top
        if phase in ("open", "comma"):
            if byte == 0x22:
                return state[:-1] + (("obj", schema, done, "key", ""),)
            if byte == 0x7D and phase == "open" and _can_close(schema, done):
                return self._finish_value(state[:-1], None)
            return None
        if phase == "key":
            keys = _next_keys(schema, done)
            if byte == 0x22:
                if key_prefix not in keys:
                    return None
                return state[:-1] + (("obj", schema, done + ((key_prefix, None),), "colon", ""),)
            extended = key_prefix + chr(byte)
            if any(key.startswith(extended) for key in keys):
                return state[:-1] + (("obj", schema, done, "key", extended),)
            return None
        if phase == "colon":
            return state[:-1] + (("obj", schema, done, "value", ""),) if byte == 0x3A else None
        if phase == "value":
            parent = state[:-1] + (("obj", schema, done, "child", ""),)
            return self._start_value(parent, _value_spec(schema, done), byte)
        if phase == "after":
            if byte == 0x2C and _next_keys(schema, done):
                return state[:-1] + (("obj", schema, done, "comma", ""),)
            if byte == 0x7D and _can_close(schema, done):
                return self._finish_value(state[:-1], None)
            return None
        return None

    def _array_item_spec(self, kind: str, values: tuple) -> tuple:
        if kind == "elements":
            return ("obj", self._element_schema)
        if kind == "bbox":
            return ("num",) + _bbox_range(values)
        return _COLOUR

    def _step_array(self, state, top, byte):
        _, kind, count, phase, values = top
        minimum, maximum = _ARRAY_SIZES[kind]
        if phase in ("open", "comma"):
            if byte == 0x5D and phase == "open" and minimum == 0:
                return self._finish_value(state[:-1], None)
            parent = state[:-1] + (("arr", kind, count, "child", values),)
            return self._start_value(parent, self._array_item_spec(kind, values), byte)
        if phase == "after":
            if byte == 0x2C and (maximum is None or count < maximum):
                return state[:-1] + (("arr", kind, count, "comma", values),)
            if byte == 0x5D and count >= minimum:
                return self._finish_value(state[:-1], None)
        return None

    def _step_number(self, state, top, byte):
        _, digits, low, high = top
        if byte in _DIGITS:
            extended = digits + chr(byte)
            return state[:-1] + (("num", extended, low, high),) if _number_viable(extended, low, high) else None
        if digits and low <= int(digits) <= high:
            return self.step(self._finish_value(state[:-1], int(digits)), byte)
        return None

    def _start_value(self, parent: tuple, spec: tuple, byte: int):
        """``parent`` (in phase ``child``) with the frame of a value of ``spec`` pushed, after its first byte."""
        kind = spec[0]
        if kind == "num":
            return self.step(parent + (("num", "", spec[1], spec[2]),), byte) if byte in _DIGITS else None
        if kind == "obj":
            return parent + (("obj", spec[1], (), "open", ""),) if byte == 0x7B else None
        if kind == "arr":
            return parent + (("arr", spec[1], 0, "open", ()),) if byte == 0x5B else None
        if byte != 0x22:
            return None
        if kind == "str":
            return parent + (("free", None),)
        if kind == "enum":
            return parent + (("enum", spec[1], ""),)
        return parent + (("colour", 0),)

    @staticmethod
    def _finish_value(stack: tuple, value):
        """``stack`` once the value of its top frame's pending key / array slot is complete."""
        if not stack:
            return COMPLETE_STATE
        parent = stack[-1]
        if parent[0] == "obj":
            _, schema, done, _, _ = parent
            if isinstance(value, str):
                done = done[:-1] + ((done[-1][0], value),)
            return stack[:-1] + (("obj", schema, done, "after", ""),)
        _, kind, count, _, values = parent
        if kind == "bbox":
            values = values + (value,)
        return stack[:-1] + (("arr", kind, count + 1, "after", values),)

    # -- shortest completion ----------------------------------------------------------------------------------

    def completion(self, state: tuple) -> bytes:
        """The shortest bytes that complete ``state`` into a caption (empty for a complete one)."""
        written = []
        while state:
            chunk = self._closing_chunk(state)
            state = self.advance(state, chunk)
            if state is None:
                raise AssertionError(f"closing chunk {chunk!r} is not accepted")
            written.append(chunk)
        return b"".join(written)

    def _closing_chunk(self, state: tuple) -> bytes:
        """Bytes that finish the innermost frame of ``state`` (and, for objects and arrays, close them)."""
        top = state[-1]
        kind = top[0]
        if kind == "start":
            return b"{"
        if kind == "free":
            sub = top[1]
            if sub is None:
                return b'"'
            if sub == "esc":
                return b'n"'
            needed, low, _ = sub
            return bytes([low]) + b"\x80" * (needed - 1) + b'"'
        if kind == "enum":
            _, options, prefix = top
            option = min((o for o in options if o.startswith(prefix)), key=len)
            return option[len(prefix):].encode() + b'"'
        if kind == "colour":
            written = top[1]
            return (b"#000000"[written:] if written < 7 else b"") + b'"'
        if kind == "num":
            # A number ends only at the byte after it, so its chunk carries on into the enclosing array's.
            _, digits, low, high = top
            number = _smallest_number(digits, low, high)
            return number[len(digits):].encode() + self._closing_chunk(self._finish_value(state[:-1], int(number)))
        if kind == "obj":
            return self._close_object(top).encode()
        return self._close_array(top).encode()

    def _min_value(self, spec: tuple, values: tuple = ()) -> str:
        kind = spec[0]
        if kind == "str":
            return '""'
        if kind == "enum":
            return '"' + min(spec[1], key=len) + '"'
        if kind == "colour":
            return '"#000000"'
        if kind == "num":
            return str(spec[1])
        if kind == "obj":
            return "{" + min((self._render_entries(v, first=True) for v in SCHEMAS[spec[1]]), key=len) + "}"
        return "[" + self._array_items(spec[1], 0, values, first=True) + "]"

    def _render_entries(self, entries, first: bool) -> str:
        parts = [f'"{key}":{self._min_value(spec)}' for key, spec in entries]
        return ("" if first else ",") + ",".join(parts) if parts else ""

    def _close_object(self, top) -> str:
        _, schema, done, phase, key_prefix = top
        candidates = []
        for variant in _compatible(schema, done):
            rest = variant[len(done):]
            if phase in ("open", "comma"):
                if not rest and phase == "comma":
                    continue
                candidates.append(self._render_entries(rest, first=True) + "}")
            elif phase == "key":
                if not rest or not rest[0][0].startswith(key_prefix):
                    continue
                key, spec = rest[0]
                candidates.append(key[len(key_prefix):] + '":' + self._min_value(spec)
                                  + self._render_entries(rest[1:], first=False) + "}")
            elif phase in ("colon", "value"):
                current = variant[len(done) - 1][1]
                candidates.append((":" if phase == "colon" else "") + self._min_value(current)
                                  + self._render_entries(rest, first=False) + "}")
            elif phase == "after":
                candidates.append(self._render_entries(rest, first=False) + "}")
        return min(candidates, key=len)

    def _array_items(self, kind: str, count: int, values: tuple, first: bool) -> str:
        """The fewest further items an array needs (at least one after a comma), comma-separated."""
        minimum, _ = _ARRAY_SIZES[kind]
        needed = max(minimum - count, 0 if first else 1)
        items = []
        for _ in range(needed):
            spec = self._array_item_spec(kind, values)
            item = self._min_value(spec)
            if kind == "bbox":
                values = values + (int(item),)
            items.append(item)
        return ",".join(items)

    def _close_array(self, top) -> str:
        _, kind, count, phase, values = top
        if phase == "after":
            minimum, _ = _ARRAY_SIZES[kind]
            if count >= minimum:
                return "]"
            return "," + self._array_items(kind, count, values, first=False) + "]"
        return self._array_items(kind, count, values, first=phase == "open") + "]"
