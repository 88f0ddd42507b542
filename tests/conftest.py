"""Shared pytest setup. Tests run on CPU with tiny random models; nothing here downloads anything."""

import pathlib

import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
QWEN_TOKENIZER_DIR = SHARED_DIR / "tokenizers" / "qwen25"

# The tiny models' matmuls are far too small to gain from threads; on a loaded 2-core machine extra threads
# only add scheduling stalls (measured: ~30 ms vs 0.16 ms per tiny matmul).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state and full fp32 matmul precision."""
    torch.manual_seed(0)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir():
    if not (QWEN_TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"Qwen tokenizer data not found at {QWEN_TOKENIZER_DIR}")
    return QWEN_TOKENIZER_DIR
