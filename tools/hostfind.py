"""Find the ComfyUI host the host tests run against, and its Python.

Order: ``COMFYUI_PATH``; else the ComfyUI whose ``custom_nodes`` folder this pack sits in. Nothing else is
guessed. The host's Python is ``COMFYUI_PYTHON``, else
``<host>/.venv/bin/python`` (``Scripts/python.exe`` on Windows).
"""

import os
import pathlib
import sys

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Starts every reason a host test skips for want of a usable host; with CI=true such a skip fails (tests/conftest.py).
NO_HOST = "no usable ComfyUI host"


def _is_comfyui(path: pathlib.Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def find_comfyui() -> pathlib.Path | None:
    """The host's root folder, or None when no ComfyUI is found (see the module docstring for the order)."""
    configured = os.environ.get("COMFYUI_PATH")
    if configured:
        path = pathlib.Path(configured).expanduser().resolve()
        # An explicit setting that points nowhere is a mistake, not "no host": say so instead of skipping.
        if not _is_comfyui(path):
            raise RuntimeError(f"COMFYUI_PATH={configured} is not a ComfyUI folder (no main.py, comfy/ and nodes.py there)")
        return path
    parent = PACK_ROOT.parent
    if parent.name == "custom_nodes" and _is_comfyui(parent.parent):
        return parent.parent
    return None


def host_python(host: pathlib.Path) -> pathlib.Path | None:
    """The interpreter that runs ``host``'s main.py, or None when it has none we can find."""
    configured = os.environ.get("COMFYUI_PYTHON")
    if configured:
        return pathlib.Path(configured).expanduser()
    relative = ("Scripts", "python.exe") if sys.platform == "win32" else ("bin", "python")
    for venv in (".venv", "venv"):
        candidate = host.joinpath(venv, *relative)
        if candidate.is_file():
            return candidate
    return None


def describe_unusable_host(problem: str) -> str:
    """The message a host test shows when it skips because the host found cannot run it (``problem`` says why)."""
    return f"{NO_HOST}: {problem}"


def describe_missing_host() -> str:
    """The message a host test shows when it skips because no host was found."""
    return (
        f"{NO_HOST}: none found; set COMFYUI_PATH to a ComfyUI folder (with its Python in .venv or COMFYUI_PYTHON) "
        "or install this pack under <ComfyUI>/custom_nodes"
    )
