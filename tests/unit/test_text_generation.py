"""Text generation with the pack's Qwen3-VL decoder against transformers' ``generate`` on a tiny random
Qwen3-VL (36 layers, hidden 32, the real vocabulary), and loading the LM head from the files that carry one."""

import pytest
import torch
from safetensors.torch import save_file

from ideogram4.safetensors_io import CheckpointError
from ideogram4.text_encoder_checkpoint import LanguageModelHeadNotFoundError, load_language_model_head
from ideogram4.text_generation import SampledTokens, generate

transformers = pytest.importorskip("transformers")

from tiny_qwen import HF_TEXT_PREFIX, pack_generation_model, tiny_qwen3_vl  # noqa: E402

# <|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n
CHAT_IDS = [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def hf_model():
    return tiny_qwen3_vl(seed=3)


@pytest.fixture(scope="module")
def pack_model(hf_model):
    return pack_generation_model(hf_model)


@pytest.fixture(scope="module")
def transformers_greedy(hf_model):
    ids = torch.tensor([CHAT_IDS])
    # No end-of-sequence token, so both sides generate exactly NEW_TOKENS tokens.
    out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                            do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(CHAT_IDS):].tolist()


def test_greedy_tokens_equal_transformers_generate(pack_model, transformers_greedy):
    encoder, head = pack_model
    tokens = generate(encoder, head, CHAT_IDS, NEW_TOKENS, SampledTokens(temperature=0.0))
    assert len(transformers_greedy) == NEW_TOKENS
    assert len(set(transformers_greedy)) > NEW_TOKENS // 2  # a real sequence, not one token repeated
    assert tokens == transformers_greedy


def test_kv_cache_path_equals_the_no_cache_path(pack_model, transformers_greedy):
    encoder, head = pack_model
    without_cache = generate(encoder, head, CHAT_IDS, NEW_TOKENS, SampledTokens(0.0), use_cache=False)
    assert without_cache == transformers_greedy
    # Sampled too: the same logits at every step draw the same tokens.
    sampled = [generate(encoder, head, CHAT_IDS, 12, SampledTokens(1.0, seed=5), use_cache=use_cache)
               for use_cache in (True, False)]
    assert sampled[0] == sampled[1] and sampled[0] != transformers_greedy[:12]


def test_generation_stops_at_a_stop_token_and_reports_progress(pack_model, transformers_greedy):
    encoder, head = pack_model
    stop = transformers_greedy[5]
    counts = []
    tokens = generate(encoder, head, CHAT_IDS, NEW_TOKENS, SampledTokens(0.0, stop_token_ids=[stop]),
                      on_tokens=counts.append)
    assert tokens == transformers_greedy[: transformers_greedy.index(stop) + 1]
    assert counts == list(range(1, len(tokens) + 1))


def _language_model_tensors(hf_model, with_head: bool) -> dict:
    state = {key: value.contiguous() for key, value in hf_model.state_dict().items()
             if key.startswith(HF_TEXT_PREFIX)}
    if with_head:
        state["lm_head.weight"] = hf_model.lm_head.weight.detach().contiguous()
    return state


def test_head_loads_from_the_text_encoder_file_or_a_separate_head_file(hf_model, tmp_path):
    full, headless, head_file = tmp_path / "full.safetensors", tmp_path / "te.safetensors", tmp_path / "head.safetensors"
    save_file(_language_model_tensors(hf_model, with_head=True), str(full))
    save_file(_language_model_tensors(hf_model, with_head=False), str(headless))
    save_file({"lm_head.weight": hf_model.lm_head.weight.detach().contiguous()}, str(head_file))
    expected_norm = hf_model.model.language_model.norm.weight
    for text_encoder, separate in ((full, None), (headless, head_file), (full, head_file)):
        head = load_language_model_head(text_encoder, separate, dtype=torch.float32)
        assert torch.equal(head.lm_head.weight, hf_model.lm_head.weight)
        assert torch.equal(head.norm.weight, expected_norm)

    with pytest.raises(LanguageModelHeadNotFoundError) as raised:
        load_language_model_head(headless, None, dtype=torch.float32)
    assert str(headless) in str(raised.value) and "qwen3-vl-8b-instruct-lm-head" in str(raised.value)
    with pytest.raises(LanguageModelHeadNotFoundError) as raised:
        load_language_model_head(headless, headless, dtype=torch.float32)
    assert "nor has" in str(raised.value)

    wrong = tmp_path / "wrong_head.safetensors"
    save_file({"lm_head.weight": torch.zeros(10, 32)}, str(wrong))
    with pytest.raises(CheckpointError, match=r"shape \[10, 32\]"):
        load_language_model_head(headless, wrong, dtype=torch.float32)
