"""The prompt enhancer's constrained decoding on a tiny random Qwen3-VL with the real Qwen vocabulary.

The random model's own output is noise; constrained, every run must end in a caption that passes the pack's
validator within the token budget. Budgets just above the shortest caption keep each run to a few model steps
and make the budget rule (close in time, never cut a string) decide most of the tokens.
"""

import functools

import pytest
import torch

from ideogram4.caption import validate_caption
from ideogram4.constrained_decoding import (
    CaptionBudgetError,
    CaptionTokenGrammar,
    ConstrainedCaptionChoice,
    TokenVocabulary,
)
from ideogram4.prompt_enhancer import SYSTEM_PROMPT, aspect_ratio, enhance_prompt, enhancer_request
from ideogram4.text_generation import SampledTokens, generate
from ideogram4.tokens import load_tokenizer

transformers = pytest.importorskip("transformers")

from tiny_qwen import pack_generation_model, tiny_qwen3_vl  # noqa: E402

SIZES = [(1024, 1024), (1920, 1080), (768, 1344)]


@functools.lru_cache(maxsize=None)
def _tokenizer_and_vocabulary(directory: str):
    tokenizer = load_tokenizer(directory)
    return tokenizer, TokenVocabulary.from_tokenizer(tokenizer, 151936)


@pytest.fixture(scope="module")
def tokenizer_and_vocabulary(qwen_tokenizer_dir):
    return _tokenizer_and_vocabulary(str(qwen_tokenizer_dir))


@pytest.fixture(scope="module")
def model():
    return pack_generation_model(tiny_qwen3_vl(seed=7))


def test_aspect_ratio_is_width_to_height_reduced_by_the_gcd():
    assert [aspect_ratio(w, h) for w, h in SIZES] == ["1:1", "16:9", "4:7"]
    request = enhancer_request("a bakery sign at sunrise", 1920, 1080)
    assert request.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n")
    assert "Aspect ratio (width:height): 16:9\nIdea: a bakery sign at sunrise<|im_end|>\n" in request
    assert request.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="idea is empty"):
        enhancer_request("  ", 1024, 1024)


def test_vocabulary_reads_the_byte_level_tokens(tokenizer_and_vocabulary):
    tokenizer, vocabulary = tokenizer_and_vocabulary
    assert len(vocabulary.token_bytes) == 151643  # every regular token, no special token
    for text in ('{"high_level_description":"Café ☕ 東京","elements":[{"bbox":[0,10,999,1000]}]}', "é"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert vocabulary.decode(ids) == text.encode()
        assert vocabulary.decode(vocabulary.greedy_tokens(text.encode())) == text.encode()


def _run(model, token_grammar, prompt_ids, budget, temperature, seed):
    encoder, head = model
    choice = ConstrainedCaptionChoice(token_grammar, budget, temperature=temperature, seed=seed)
    counts = []
    tokens = generate(encoder, head, prompt_ids, budget, choice, on_tokens=counts.append)
    return choice.caption(), tokens, counts


def test_fifty_seeds_by_three_aspect_ratios_all_give_valid_captions_within_budget(model, tokenizer_and_vocabulary):
    tokenizer, vocabulary = tokenizer_and_vocabulary
    token_grammars = [CaptionTokenGrammar(vocabulary, keep_boxes=keep_boxes) for keep_boxes in (False, True)]
    captions = set()
    for width, height in SIZES:
        # The request's user turn (the system prompt only lengthens the prompt, it does not change the rules).
        prompt_ids = tokenizer(f"<|im_start|>user\nAspect ratio (width:height): {aspect_ratio(width, height)}\n"
                               "Idea: a fox<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        for seed in range(50):
            token_grammar = token_grammars[seed % 2]
            budget = token_grammar.shortest_caption_tokens() + seed % 4
            caption, tokens, counts = _run(model, token_grammar, prompt_ids, budget, temperature=1.0, seed=seed)
            report = validate_caption(caption)
            assert report.kind == "json" and report.ok, (caption, report.summary())
            assert len(tokens) <= budget and counts[-1] == len(tokens)
            assert vocabulary.decode(tokens).decode() == caption  # already canonical: nothing to re-serialise
            captions.add(caption)
    assert len(captions) > 30  # the seeds matter: the model chose, not a fixed closing


def test_greedy_caption_from_the_full_request_and_a_longer_budget(model, tokenizer_and_vocabulary):
    tokenizer, vocabulary = tokenizer_and_vocabulary
    encoder, head = model
    # Unconstrained, the random model writes noise that is no caption.
    request_ids = tokenizer(enhancer_request("a fox", 1024, 768), add_special_tokens=False)["input_ids"]
    noise = generate(encoder, head, request_ids, 8, SampledTokens(0.0))
    assert validate_caption(tokenizer.decode(noise)).kind == "plain" or not validate_caption(tokenizer.decode(noise)).ok
    token_grammar = CaptionTokenGrammar(vocabulary, keep_boxes=True)
    counts = []
    captions = [enhance_prompt(encoder, head, tokenizer, token_grammar, "a fox", 1024, 768, max_new_tokens=48,
                               temperature=0.0, seed=seed, on_tokens=counts.append) for seed in (0, 1)]
    assert captions[0] == captions[1]  # greedy ignores the seed
    assert validate_caption(captions[0]).ok
    assert max(counts) <= 48


def test_a_budget_too_small_for_any_caption_is_a_clear_error(tokenizer_and_vocabulary):
    _, vocabulary = tokenizer_and_vocabulary
    token_grammar = CaptionTokenGrammar(vocabulary)
    shortest = token_grammar.shortest_caption_tokens()
    with pytest.raises(CaptionBudgetError, match=f"max_new_tokens is {shortest - 1}.*at least {shortest}"):
        ConstrainedCaptionChoice(token_grammar, shortest - 1)
    ConstrainedCaptionChoice(token_grammar, shortest)  # the shortest caption itself fits
