"""Shared pytest setup. Tests run on CPU with tiny random models; nothing here downloads anything."""

import os
import pathlib
import sys

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


def running_in_ci() -> bool:
    """CI=true (as CI services and .ci/run set it): every test must run; nothing may skip for want of a host or data."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir():
    if not (QWEN_TOKENIZER_DIR / "vocab.json").is_file():
        message = f"Qwen tokenizer data not found at {QWEN_TOKENIZER_DIR}"
        if running_in_ci():
            pytest.fail(f"{message} (CI=true: the shared folder must sit beside the checkout)")
        pytest.skip(message)
    return QWEN_TOKENIZER_DIR


def _fail_a_skip_for_want_of_a_host(report) -> None:
    """With CI=true, turn a host test's skip for want of a usable host into a failure (a user without a host
    gets the skip and its message)."""
    if not (report.skipped and running_in_ci()):
        return
    # Every host test that can skip for want of a host finds it through tools.hostfind, so it is imported by then.
    hostfind = sys.modules.get("tools.hostfind")
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if hostfind is not None and hostfind.NO_HOST in reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true and a host test skipped for want of a ComfyUI host: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skip_for_want_of_a_host(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_a_skip_for_want_of_a_host(outcome.get_result())
