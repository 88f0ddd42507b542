"""Browser tests: the pack's web extension in the real ComfyUI frontend, in headless Chromium.

The host is the one the host tests use (``COMFYUI_PATH``, see tools/hostfind.py); run the module once per
host. Chromium is the system browser (Debian's ``chromium`` package, or ``CHROMIUM_PATH``) driven by Playwright from
PyPI; nothing is downloaded. Without a browser or a host the tests are skipped with a message.
"""

import os
import pathlib
import shutil
import sys

import pytest

HOST_TESTS = pathlib.Path(__file__).resolve().parents[1] / "host"
if str(HOST_TESTS) not in sys.path:
    sys.path.insert(0, str(HOST_TESTS))


def chromium_path() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found (install Debian's chromium package or set CHROMIUM_PATH)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements-test.txt)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield chromium
        chromium.close()
