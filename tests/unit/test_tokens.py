"""Prompt templating, tokenisation, padding and tokenizer discovery (ideogram4.tokens)."""

import functools
import json
import pathlib
import shutil

import pytest
import torch

from ideogram4.safetensors_io import CheckpointError
from ideogram4.tokens import (
    MAX_TEXT_TOKENS,
    PAD_TOKEN_ID,
    PromptTooLongError,
    TokenizerNotFoundError,
    apply_chat_template,
    find_tokenizer_dir,
    load_tokenizer,
    pad_token_batch,
    tokenize_prompt,
    tokenize_prompts,
)

# Ids in the Qwen2.5/Qwen3 vocabulary (spec C.2): <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n
TEMPLATE_HEAD_IDS = [151644, 872, 198]
TEMPLATE_TAIL_IDS = [151645, 198, 151644, 77091, 198]

JSON_CAPTION = json.dumps(
    {"summary": "A lighthouse at dusk", "style": {"medium": "photo"}, "text": [{"content": "OPEN"}]},
    separators=(",", ":"),
)
PLAIN_PROMPT = "A watercolor painting of a fox, soft light"
NON_ASCII_PROMPT = "Ein Café in München — 東京の夜景 🌃, «naïve» Ωμέγα"


@functools.lru_cache(maxsize=None)
def _load_tokenizer_once(directory: str):
    return load_tokenizer(directory)  # ~2 s to build from vocab.json + merges.txt


@functools.lru_cache(maxsize=None)
def _autotokenizer_once(directory: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture
def tokenizer(qwen_tokenizer_dir):
    return _load_tokenizer_once(str(qwen_tokenizer_dir))


def test_template_string_is_the_official_user_turn():
    assert apply_chat_template("X") == "<|im_start|>user\nX<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("prompt", [JSON_CAPTION, PLAIN_PROMPT, NON_ASCII_PROMPT], ids=["json", "plain", "non_ascii"])
def test_token_ids_equal_autotokenizer_on_the_whole_template(tokenizer, qwen_tokenizer_dir, prompt):
    oracle = _autotokenizer_once(str(qwen_tokenizer_dir))
    templated = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    expected = oracle(templated, add_special_tokens=False)["input_ids"]

    ids = tokenize_prompt(tokenizer, prompt)

    assert ids == expected
    assert ids[:3] == TEMPLATE_HEAD_IDS
    assert ids[-5:] == TEMPLATE_TAIL_IDS
    # The prompt part round-trips, so nothing was dropped or normalised.
    assert oracle.decode(ids[3:-5]) == prompt


def test_template_is_tokenised_as_one_string(tokenizer):
    """A prompt starting with a newline merges with the template's "\n" into one "\n\n" token (271) when the
    whole string is tokenised, as the official pipeline does; tokenising the pieces separately would not."""
    prompt = "\nfoo"
    piecewise = (tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
                 + tokenizer(prompt, add_special_tokens=False)["input_ids"]
                 + tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])

    ids = tokenize_prompt(tokenizer, prompt)

    assert ids[:3] == [151644, 872, 271]
    assert ids != piecewise


def test_prompt_over_2048_tokens_raises_with_the_count(tokenizer):
    # "a" and each " a" are one token; the template adds 8.
    prompt = "a" + " a" * (MAX_TEXT_TOKENS - 8 - 1)
    assert len(tokenize_prompt(tokenizer, prompt)) == MAX_TEXT_TOKENS

    too_long = prompt + " a"
    with pytest.raises(PromptTooLongError, match=r"2049 tokens.*at most 2048"):
        tokenize_prompt(tokenizer, too_long)


def test_left_padding_with_pad_id_and_mask():
    batch = pad_token_batch([[5, 6, 7], [9]])
    assert batch.lengths == [3, 1]
    assert batch.input_ids.tolist() == [[5, 6, 7], [PAD_TOKEN_ID, PAD_TOKEN_ID, 9]]
    assert batch.attention_mask.tolist() == [[True, True, True], [False, False, True]]
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.bool


def test_tokenize_prompts_pads_real_prompts(tokenizer):
    batch = tokenize_prompts(tokenizer, [PLAIN_PROMPT, "hi"])
    short = tokenize_prompt(tokenizer, "hi")
    longest = max(batch.lengths)
    assert batch.lengths == [len(tokenize_prompt(tokenizer, PLAIN_PROMPT)), len(short)]
    assert batch.input_ids[1, longest - len(short):].tolist() == short
    assert (batch.input_ids[1, : longest - len(short)] == 151643).all()


# ------------------------------------------------------------------------------------------------------------------
# Finding the tokenizer folder
# ------------------------------------------------------------------------------------------------------------------


def _copy_tokenizer(source: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    destination.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(source / name, destination / name)
    return destination


def test_tokenizer_folder_beside_hf_text_encoder_is_found(qwen_tokenizer_dir, tmp_path):
    repo = tmp_path / "repo"
    (repo / "text_encoder").mkdir(parents=True)
    expected = _copy_tokenizer(qwen_tokenizer_dir, repo / "tokenizer")
    assert find_tokenizer_dir(repo / "text_encoder") == expected
    weights_file = repo / "text_encoder" / "model.safetensors"
    weights_file.touch()
    assert find_tokenizer_dir(weights_file) == expected


def test_tokenizer_folder_beside_single_file_is_found(qwen_tokenizer_dir, tmp_path):
    folder = tmp_path / "text_encoders"
    expected = _copy_tokenizer(qwen_tokenizer_dir, folder / "tokenizer")
    weights_file = folder / "qwen3vl_8b_fp8_scaled.safetensors"
    weights_file.touch()
    assert find_tokenizer_dir(weights_file) == expected


def test_the_hosts_tokenizer_serves_a_single_file_without_one_beside_it(qwen_tokenizer_dir, tmp_path):
    host_tokenizer = _copy_tokenizer(qwen_tokenizer_dir, tmp_path / "host" / "qwen25_tokenizer")
    weights_file = tmp_path / "models" / "text_encoders" / "qwen3vl_8b_fp8_scaled.safetensors"
    assert find_tokenizer_dir(weights_file, host_tokenizer) == host_tokenizer


def test_the_folder_beside_the_weights_wins_over_the_hosts(qwen_tokenizer_dir, tmp_path):
    folder = tmp_path / "text_encoders"
    beside = _copy_tokenizer(qwen_tokenizer_dir, folder / "tokenizer")
    host_tokenizer = _copy_tokenizer(qwen_tokenizer_dir, tmp_path / "host" / "qwen25_tokenizer")
    assert find_tokenizer_dir(folder / "te.safetensors", host_tokenizer) == beside


def test_the_core_never_looks_for_a_host_on_disk(qwen_tokenizer_dir, tmp_path, monkeypatch):
    # A ComfyUI at COMFYUI_PATH and at comfy-cli's default place: neither is used unless the caller passes it.
    for host in (tmp_path / "env_host", tmp_path / "home" / "comfy" / "ComfyUI"):
        _copy_tokenizer(qwen_tokenizer_dir, host / "comfy" / "text_encoders" / "qwen25_tokenizer")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "env_host"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(TokenizerNotFoundError):
        find_tokenizer_dir(tmp_path / "models" / "te.safetensors")


def test_missing_tokenizer_raises_naming_the_places_searched(tmp_path):
    host_tokenizer = tmp_path / "host" / "qwen25_tokenizer"  # a host without one (or an incomplete one)
    host_tokenizer.mkdir(parents=True)
    with pytest.raises(TokenizerNotFoundError, match="text_encoders/tokenizer.*host/qwen25_tokenizer.*beside"):
        find_tokenizer_dir(tmp_path / "text_encoders" / "te.safetensors", host_tokenizer)


def test_a_tokenizer_of_another_family_is_refused(qwen_tokenizer_dir, tmp_path):
    folder = _copy_tokenizer(qwen_tokenizer_dir, tmp_path / "other")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    # Drop the special-token table: <|im_start|> would then be split into ordinary BPE pieces.
    config.pop("added_tokens_decoder")
    config.pop("additional_special_tokens")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a Qwen2.5/Qwen3 tokenizer"):
        load_tokenizer(folder)
