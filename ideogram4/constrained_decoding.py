"""Token-level constrained decoding of Ideogram 4 captions with a Qwen byte-level BPE vocabulary.

At every step only the tokens whose bytes keep the output a valid prefix of a caption
(:class:`ideogram4.caption_grammar.CaptionGrammar`) are allowed, and only those after which the shortest closing of
the caption still fits the remaining budget; when nothing else fits, the closing itself is written. So the result
always passes :func:`ideogram4.caption.validate_caption` and is never cut off inside a string.

Masks are cheap because most steps are inside a free-text string: the tokens that are plain string content (no
quote, backslash or control byte) are grouped once, when the vocabulary is read, by the UTF-8 state they leave
the string in; per step only the ~1,700 tokens holding a quote or backslash are run through the automaton. In
every other state only the tokens whose first byte the automaton accepts are tried (digits, ``"``, ``,`` ...).
Allowed sets are cached per automaton state, and states repeat (every token inside a string leaves it the same).
"""

from __future__ import annotations

import codecs
import functools
import json

import torch

from .caption import serialize_caption, validate_caption
from .caption_grammar import COMPLETE_STATE, START_STATE, CaptionGrammar
from .text_generation import sample_token


class CaptionBudgetError(ValueError):
    """``max_new_tokens`` is smaller than the shortest caption."""


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE: the printable character each byte is written as in vocab.json -> the byte (GPT-2 scheme:
    printable Latin-1 bytes stand for themselves, the others are shifted to 256 + n)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    characters = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + shifted)
            shifted += 1
    return {character: byte for byte, character in characters.items()}


class TokenVocabulary:
    """The bytes of every regular token of a Qwen tokenizer (special tokens excluded), indexed by token id, and the
    groupings the caption masks need. ``model_vocab_size`` is the LM head's width (151936 for Qwen3-VL)."""

    def __init__(self, token_bytes: dict[int, bytes], model_vocab_size: int):
        self.token_bytes = token_bytes
        self.model_vocab_size = model_vocab_size
        self.id_of = {data: token for token, data in token_bytes.items()}
        self.longest = max(len(data) for data in token_bytes.values())
        self.by_first_byte: dict[int, list[tuple[int, bytes]]] = {}
        # Free-string content from a character boundary: UTF-8 state after the token -> ids.
        content: dict[object, list[int]] = {}
        self.content_continuing = []  # content tokens that start inside a character (a continuation byte)
        self.quote_or_backslash = []
        for token, data in token_bytes.items():
            self.by_first_byte.setdefault(data[0], []).append((token, data))
            if b'"' in data or b"\\" in data:
                self.quote_or_backslash.append((token, data))
            elif min(data) >= 0x20:
                if 0x80 <= data[0] <= 0xBF:
                    self.content_continuing.append((token, data))
                end = _utf8_end_state(data)
                if end is not False:
                    content.setdefault(end, []).append(token)
        self.content_from_boundary = {end: torch.tensor(ids, dtype=torch.long) for end, ids in content.items()}

    @classmethod
    def from_tokenizer(cls, tokenizer, model_vocab_size: int) -> "TokenVocabulary":
        decoder = _byte_decoder()
        special = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        token_bytes = {}
        for text, token in tokenizer.get_vocab().items():
            if token in special or token >= model_vocab_size:
                continue
            try:
                token_bytes[token] = bytes(decoder[character] for character in text)
            except KeyError:
                continue  # not a byte-level token (an added token that is not marked special)
        return cls(token_bytes, model_vocab_size)

    def greedy_tokens(self, data: bytes) -> list[int]:
        """Token ids spelling ``data``, longest match first (every single byte is a token, so this always works)."""
        tokens, position = [], 0
        while position < len(data):
            for size in range(min(self.longest, len(data) - position), 0, -1):
                token = self.id_of.get(data[position:position + size])
                if token is not None:
                    tokens.append(token)
                    position += size
                    break
            else:
                raise ValueError(f"byte {data[position]:#x} has no token in this vocabulary")
        return tokens

    def decode(self, tokens: list[int]) -> bytes:
        return b"".join(self.token_bytes[token] for token in tokens)


def _utf8_end_state(data: bytes):
    """String content ``data`` read from a character boundary: the free-string sub-state it ends in (None = on
    a boundary, else inside a character), or False if it is not valid UTF-8 from a boundary."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return False
    pending = decoder.getstate()[0]
    if not pending:
        return None
    grammar = CaptionGrammar()
    state = grammar.advance((("free", None),), pending)
    return False if state is None else state[-1][1]


def _make_room(cache: dict, limit: int) -> None:
    """Empty ``cache`` when it holds ``limit`` entries (entries are recomputed on demand, identically)."""
    if len(cache) >= limit:
        cache.clear()


class CaptionTokenGrammar:
    """The caption automaton lifted to a token vocabulary: per state, the allowed tokens grouped by the state
    they lead to, and the tokens of the shortest closing. The caches are shared by every generation that uses this
    object and bounded: a state holds the element's index, so the states met grow with every caption written, and a
    string state's transitions hold almost the whole vocabulary (about 1.2 MB)."""

    # States recur token after token inside one string, rarely far apart: a small cache keeps the speed.
    MAX_CACHED_TRANSITIONS = 64
    MAX_CACHED_SMALL = 4096

    def __init__(self, vocabulary: TokenVocabulary, keep_boxes: bool = False):
        self.vocabulary = vocabulary
        self.grammar = CaptionGrammar(keep_boxes)
        self._transitions: dict[tuple, list[tuple[tuple, torch.Tensor]]] = {}
        self._closing: dict[tuple, list[int]] = {}
        self._forced: dict[tuple, bytes] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    def transitions(self, state: tuple) -> list[tuple[tuple, torch.Tensor]]:
        """[(next state, token ids that lead there)] for every token allowed in ``state``."""
        found = self._transitions.get(state)
        if found is None:
            _make_room(self._transitions, self.MAX_CACHED_TRANSITIONS)
            found = self._transitions[state] = self._compute_transitions(state)
        return found

    def _compute_transitions(self, state: tuple):
        groups: dict[tuple, list] = {}
        top = state[-1] if state else None
        if top is not None and top[0] == "free" and top[1] is None:
            for end, ids in self.vocabulary.content_from_boundary.items():
                groups.setdefault(state[:-1] + (("free", end),), []).append(ids)
            candidates = [(token, data, state, 0) for token, data in self.vocabulary.quote_or_backslash]
        else:
            candidates = []
            for byte, tokens in self.vocabulary.by_first_byte.items():
                after_first = self.grammar.step(state, byte)
                if after_first is not None:
                    candidates += [(token, data, after_first, 1) for token, data in tokens]
        step = self.grammar.step
        for token, data, current, offset in candidates:
            for byte in data[offset:]:
                current = step(current, byte)
                if current is None:
                    break
            if current is not None:
                groups.setdefault(current, []).append(torch.tensor([token], dtype=torch.long))
        return [(next_state, torch.cat(ids)) for next_state, ids in groups.items()]

    def mask(self, state: tuple, fitting: tuple, size: int, device) -> torch.Tensor:
        """Boolean (size,) mask of the tokens of the transitions numbered ``fitting`` from ``state``, on ``device``.
        Cached: inside a string the state and the fitting transitions repeat token after token."""
        key = (state, fitting, size, str(device))
        found = self._masks.get(key)
        if found is None:
            _make_room(self._masks, 256)  # masks are 150 KB each; states rarely recur far apart
            transitions = self.transitions(state)
            found = torch.zeros(size, dtype=torch.bool)
            for index in fitting:
                found[transitions[index][1]] = True
            found = self._masks[key] = found.to(device)
        return found

    def forced_bytes(self, state: tuple) -> bytes:
        """The bytes that must follow ``state`` whatever comes next (e.g. the rest of the only key possible),
        up to the first choice."""
        found = self._forced.get(state)
        if found is None:
            forced = bytearray()
            current = state
            while current:
                options = [(byte, after) for byte in range(256) if (after := self.grammar.step(current, byte))]
                if len(options) != 1:
                    break
                byte, current = options[0]
                forced.append(byte)
            _make_room(self._forced, self.MAX_CACHED_SMALL)
            found = self._forced[state] = bytes(forced)
        return found

    def closing_tokens(self, state: tuple) -> list[int]:
        """Tokens of the shortest completion of ``state`` (empty when complete)."""
        found = self._closing.get(state)
        if found is None:
            _make_room(self._closing, self.MAX_CACHED_SMALL)
            found = self._closing[state] = self.vocabulary.greedy_tokens(self.grammar.completion(state))
        return found

    def shortest_caption_tokens(self) -> int:
        return len(self.closing_tokens(START_STATE))


class ConstrainedCaptionChoice:
    """``choose`` for :func:`ideogram4.text_generation.generate`: one caption within ``max_new_tokens`` tokens.

    Each step masks the logits to the allowed tokens whose state can still be closed within the budget left, then
    picks greedily (temperature 0) or samples with ``generator``; when no token fits, it writes the closing and
    finishes. Raises :class:`CaptionBudgetError` up front when even the shortest caption does not fit.
    """

    def __init__(self, token_grammar: CaptionTokenGrammar, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0):
        shortest = token_grammar.shortest_caption_tokens()
        if max_new_tokens < shortest:
            raise CaptionBudgetError(
                f"max_new_tokens is {max_new_tokens}, but the shortest caption the schema allows takes {shortest} "
                f"tokens. Set max_new_tokens to at least {shortest} (a useful caption needs several hundred)."
            )
        self.token_grammar = token_grammar
        self.state = START_STATE
        self.remaining = max_new_tokens
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []

    def __call__(self, logits: torch.Tensor) -> tuple[list[int], bool]:
        grammar = self.token_grammar
        transitions = grammar.transitions(self.state)
        fitting = tuple(index for index, (next_state, _) in enumerate(transitions)
                        if len(grammar.closing_tokens(next_state)) <= self.remaining - 1)
        if not fitting:
            closing = grammar.closing_tokens(self.state)
            self.tokens += closing
            self.remaining -= len(closing)
            self.state = COMPLETE_STATE
            return list(closing), True
        mask = grammar.mask(self.state, fitting, logits.shape[-1], logits.device)
        masked = logits.masked_fill(~mask, float("-inf"))
        token = sample_token(masked, self.temperature, self.generator)
        tokens = [token]
        self.state = grammar.grammar.advance(self.state, grammar.vocabulary.token_bytes[token])
        # Text the schema forces next (a key's remaining letters, '":"', closing brackets) is written at once, in
        # its longest-match tokens, without asking the model: fewer model steps, and the budget is not spent on
        # odd splits of fixed text. Only when the closing after it still fits.
        forced = grammar.forced_bytes(self.state)
        if forced:
            forced_tokens = grammar.vocabulary.greedy_tokens(forced)
            after = grammar.grammar.advance(self.state, forced)
            if len(forced_tokens) + len(grammar.closing_tokens(after)) <= self.remaining - 1:
                tokens += forced_tokens
                self.state = after
        self.tokens += tokens
        self.remaining -= len(tokens)
        return tokens, grammar.grammar.is_complete(self.state)

    def caption(self) -> str:
        """The finished caption, canonical and minified; checked against the pack's validator."""
        text = self.token_grammar.vocabulary.decode(self.tokens).decode("utf-8")
        caption = serialize_caption(json.loads(text))
        report = validate_caption(caption)
        if not report.ok:  # the automaton guarantees this; a failure is a bug in the grammar, not the input
            raise AssertionError(f"constrained decoding produced an invalid caption: {report.summary()}")
        return caption
