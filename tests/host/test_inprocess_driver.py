"""Runs the in-process host tests (tests/host/test_inprocess_*.py) in the host's own Python.

Those tests import ``comfy``, so they need the host's interpreter and packages. Under the pack's venv
(``pytest tests``) this driver starts ``<host python> -m pytest <those files>`` in a subprocess and fails with their
output if they fail; under the host's Python they run directly and this driver skips itself.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import comfy_inprocess
from tools import hostfind

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT_S = 1800


def inprocess_test_files() -> list[str]:
    return sorted(str(path.relative_to(comfy_inprocess.PACK_ROOT)) for path in HERE.glob("test_inprocess_*.py")
                  if path.name != pathlib.Path(__file__).name)


def test_inprocess_host_tests_pass_under_the_host_python():
    host, python = comfy_inprocess.find_host()
    if host is None:
        pytest.skip(hostfind.describe_missing_host())
    if python is None or not python.is_file():
        pytest.skip(hostfind.describe_unusable_host(f"the ComfyUI host at {host} has no Python at .venv/bin/python; "
                                                    "set COMFYUI_PYTHON"))
    if comfy_inprocess.running_under_host_python(python):
        pytest.skip("already running under the host's Python: the in-process host tests run directly in this session")
    probe = subprocess.run([str(python), "-c", "import pytest, torch"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(hostfind.describe_unusable_host(
            f"the host Python {python} cannot import pytest and torch (install pytest there: {python} -m pip "
            f"install pytest): {probe.stderr.strip().splitlines()[-1:]}"))

    command = [str(python), "-m", "pytest", *inprocess_test_files(), "-q", "-p", "no:cacheprovider", "-rfEs"]
    # The LoRA tests compare with diffusers, which only this (the pack's) Python has.
    env = {**os.environ, "COMFYUI_PATH": str(host), "PYTHONDONTWRITEBYTECODE": "1",
           "IDEOGRAM4_ORACLE_PYTHON": sys.executable}
    result = subprocess.run(command, cwd=comfy_inprocess.PACK_ROOT, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    output = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"in-process host tests failed under {python} (host {host}):\n{output}"
    assert " passed" in result.stdout, f"no in-process host test ran under {python}:\n{output}"
