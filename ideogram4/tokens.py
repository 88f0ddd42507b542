"""Prompt -> Qwen token ids for the Ideogram 4 text encoder.

The official pipeline renders one user turn through the Qwen3-VL chat template and tokenises the *whole*
rendered string with ``add_special_tokens=False``. For a text-only user message that template yields exactly
:data:`CHAT_TEMPLATE` (no system prompt, no think block), so the string is built here directly: the tokenizer
files the pack finds (ComfyUI's Qwen2.5 copy in particular) carry a different chat template that would add a
default system prompt.

Tokenising the rendered string in one call matters: BPE may merge across the boundary between the prompt and
the template's ``\\n``, so tokenising the pieces separately can give other ids.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import torch

from .safetensors_io import CheckpointError

CHAT_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
MAX_TEXT_TOKENS = 2048  # official limit, template tokens included; longer prompts are an error, not truncated
PAD_TOKEN_ID = 151643  # <|endoftext|>; its embedding is computed for pad rows but their features are zeroed

QWEN_SPECIAL_TOKEN_IDS = {"<|endoftext|>": PAD_TOKEN_ID, "<|im_start|>": 151644, "<|im_end|>": 151645}

TOKENIZER_FOLDER_NAME = "tokenizer"


class PromptTooLongError(ValueError):
    """A templated prompt has more than :data:`MAX_TEXT_TOKENS` tokens."""


class TokenizerNotFoundError(CheckpointError):
    """No usable Qwen tokenizer data was found (a loading error like any other of the pack)."""


@dataclass(frozen=True)
class TokenBatch:
    """Left-padded token ids of several prompts.

    input_ids: (B, L) int64, padding = :data:`PAD_TOKEN_ID`; attention_mask: (B, L) bool, True on real tokens;
    lengths: real token count per prompt (L = max(lengths)).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]


def apply_chat_template(prompt: str) -> str:
    """The exact string the official pipeline tokenises for ``prompt``."""
    return CHAT_TEMPLATE.format(prompt=prompt)


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of the templated ``prompt``; raises :class:`PromptTooLongError` past :data:`MAX_TEXT_TOKENS`."""
    ids = list(tokenizer(apply_chat_template(prompt), add_special_tokens=False)["input_ids"])
    if len(ids) > MAX_TEXT_TOKENS:
        raise PromptTooLongError(
            f"The prompt is {len(ids)} tokens long after the chat template; Ideogram 4 accepts at most "
            f"{MAX_TEXT_TOKENS} (template tokens included). Shorten the prompt by {len(ids) - MAX_TEXT_TOKENS} tokens."
        )
    return ids


def pad_token_batch(token_ids: list[list[int]], pad_id: int = PAD_TOKEN_ID) -> TokenBatch:
    """Left-pad token id lists to the longest one, as the official pipeline does for batches."""
    if not token_ids:
        raise ValueError("pad_token_batch needs at least one token list")
    lengths = [len(ids) for ids in token_ids]
    longest = max(lengths)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.bool)
    for row, ids in enumerate(token_ids):
        start = longest - len(ids)
        input_ids[row, start:] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, start:] = True
    return TokenBatch(input_ids=input_ids, attention_mask=attention_mask, lengths=lengths)


def tokenize_prompts(tokenizer, prompts: list[str]) -> TokenBatch:
    """Template, tokenise and left-pad ``prompts``."""
    return pad_token_batch([tokenize_prompt(tokenizer, prompt) for prompt in prompts])


# --------------------------------------------------------------------------------------------------------------
# Finding and loading the tokenizer data
# --------------------------------------------------------------------------------------------------------------


def is_tokenizer_dir(folder: str | os.PathLike | None) -> bool:
    """True if ``folder`` holds tokenizer data transformers can load: tokenizer_config.json (it registers the
    ``<|im_start|>`` family as special tokens) plus vocab.json + merges.txt or a tokenizer.json."""
    if folder is None:
        return False
    folder = pathlib.Path(folder)
    has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    has_vocabulary = has_bpe_files or (folder / "tokenizer.json").is_file()
    return has_vocabulary and (folder / "tokenizer_config.json").is_file()


def _beside_weights_candidates(weights_path: str | os.PathLike) -> list[pathlib.Path]:
    """``tokenizer/`` next to the weights: in the weights folder itself or its parent (HF layout
    ``<repo>/text_encoder/`` + ``<repo>/tokenizer/``)."""
    weights_path = pathlib.Path(weights_path)
    folder = weights_path if weights_path.is_dir() else weights_path.parent
    return [folder / TOKENIZER_FOLDER_NAME, folder.parent / TOKENIZER_FOLDER_NAME]


def find_tokenizer_dir(weights_path: str | os.PathLike, host_tokenizer_dir: str | os.PathLike | None = None
                       ) -> pathlib.Path:
    """Folder with the Qwen tokenizer data: a ``tokenizer/`` folder beside the weights, else
    ``host_tokenizer_dir`` (inside ComfyUI the nodes pass the running host's bundled Qwen tokenizer; the core
    never looks for a host on disk)."""
    searched = _beside_weights_candidates(weights_path)
    if host_tokenizer_dir is not None:
        searched.append(pathlib.Path(host_tokenizer_dir))
    for candidate in searched:
        if is_tokenizer_dir(candidate):
            return candidate
    raise TokenizerNotFoundError(
        "No Qwen tokenizer data found. Looked in: " + ", ".join(str(p) for p in searched) + ". Put a "
        "'tokenizer' folder (tokenizer_config.json, vocab.json, merges.txt) beside the text encoder weights, for "
        "example the official release's tokenizer/ folder."
    )


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """A transformers Qwen2 tokenizer (fast where available) from ``tokenizer_dir``.

    Its own chat template is never used; see :func:`apply_chat_template`.
    """
    from transformers import AutoTokenizer  # deferred: importing transformers takes seconds

    if not is_tokenizer_dir(tokenizer_dir):
        raise TokenizerNotFoundError(
            f"{tokenizer_dir} lacks tokenizer_config.json plus vocab.json + merges.txt (or tokenizer.json); "
            "it is not a Qwen tokenizer folder."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"transformers could not load the tokenizer in {tokenizer_dir} ({type(error).__name__}: {error}). "
            "Replace it with a Qwen2.5/Qwen3-VL tokenizer folder, e.g. ComfyUI's comfy/text_encoders/qwen25_tokenizer."
        ) from error
    # A tokenizer of another model family would silently produce ids the text encoder never saw.
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKEN_IDS}
    if found != QWEN_SPECIAL_TOKEN_IDS:
        raise CheckpointError(
            f"The tokenizer in {tokenizer_dir} is not a Qwen2.5/Qwen3 tokenizer: special token ids {found}, "
            f"expected {QWEN_SPECIAL_TOKEN_IDS}. Use the Qwen3-VL tokenizer folder or ComfyUI's qwen25_tokenizer."
        )
    return tokenizer
