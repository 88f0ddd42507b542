"""Import a ComfyUI host and this pack into the test process (for tests/host/test_inprocess_*.py).

These tests import ``comfy`` itself, so they must run in the host's own Python (its torch, its dependencies):

    COMFYUI_PATH=~/comfy/ComfyUI ~/comfy/ComfyUI/.venv/bin/python -m pytest tests/host -k inprocess

Under any other Python (the pack's venv running ``pytest tests``) they skip, and ``test_inprocess_driver.py``
runs them in a subprocess with the host's Python instead.

:func:`host` returns a namespace with the host folder and the pack loaded as a package the way ComfyUI loads a
custom node (``pack.nodes.sampler_node`` etc.); ComfyUI runs on the CPU (``args.cpu``).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import pkgutil
import subprocess
import sys
import types

import pytest

from tools import hostfind

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACK_MODULE_NAME = "ideogram4_reference_pack"
RUN_UNDER_HOST_MESSAGE = (
    "in-process host tests import comfy and run only in the host's Python; test_inprocess_driver.py runs them "
    "there (or: COMFYUI_PATH=<ComfyUI> <ComfyUI>/.venv/bin/python -m pytest tests/host -k inprocess)"
)


@functools.lru_cache(maxsize=None)
def _prefix_of(python: str) -> pathlib.Path | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                             timeout=120)
    except OSError:
        return None
    return pathlib.Path(out.stdout.strip()).resolve() if out.returncode == 0 else None


def find_host() -> tuple[pathlib.Path | None, pathlib.Path | None]:
    """(host folder, host Python) or (None, None); a bad COMFYUI_PATH fails the test with hostfind's message."""
    try:
        found = hostfind.find_comfyui()
    except RuntimeError as error:
        pytest.fail(str(error))
    if found is None:
        return None, None
    return found, hostfind.host_python(found)


def running_under_host_python(python: pathlib.Path | None) -> bool:
    if python is None:
        return True  # no separate interpreter known: use this one
    return _prefix_of(str(python)) == pathlib.Path(sys.prefix).resolve()


def _share_core_modules_with_pack(pack_name: str) -> None:
    """Make the pack's relative imports of its core (``from ..ideogram4.x import``) resolve to the modules the
    tests import as top-level ``ideogram4``, so both sides share one set of classes (errors, configs). The server
    tests cover the pack loading its own copy exactly as ComfyUI does."""
    import ideogram4

    for info in pkgutil.iter_modules(ideogram4.__path__):
        importlib.import_module(f"ideogram4.{info.name}")
    for name, module in list(sys.modules.items()):
        if name == "ideogram4" or name.startswith("ideogram4."):
            sys.modules[f"{pack_name}.{name}"] = module


@functools.lru_cache(maxsize=None)
def _import_host(host_dir: str) -> types.SimpleNamespace:
    # The host folder goes first: it has top-level modules (nodes.py, server.py, utils/), and this repo's nodes/
    # has one of those names; ComfyUI's must win inside ComfyUI's own imports.
    sys.path.insert(0, host_dir)
    for name in ("nodes", "server", "utils"):
        module = sys.modules.get(name)
        if module is not None and not str(getattr(module, "__file__", "") or "").startswith(host_dir):
            del sys.modules[name]  # a same-named module of this repo imported earlier must not shadow the host's

    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported: it picks the device at import time
    importlib.import_module("comfy.model_management")  # now, with args.cpu set

    _share_core_modules_with_pack(PACK_MODULE_NAME)
    spec = importlib.util.spec_from_file_location(
        PACK_MODULE_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE_NAME] = pack
    spec.loader.exec_module(pack)
    for name in ("compat", "dit_loader", "extension", "lora_loader", "model_wrapper", "noise_latent", "precision",
                 "progress", "prompt_enhancer", "sampler_node", "scheduler_guider", "settings", "text_encoder_nodes",
                 "vae_nodes"):
        importlib.import_module(f"{PACK_MODULE_NAME}.nodes.{name}")
    return types.SimpleNamespace(path=pathlib.Path(host_dir), pack=pack, nodes=sys.modules[f"{PACK_MODULE_NAME}.nodes"])


def skip_reason() -> str | None:
    """Why in-process host tests cannot run in this process, or None when they can."""
    found, python = find_host()
    if found is None:
        return hostfind.describe_missing_host()
    if not running_under_host_python(python):
        return RUN_UNDER_HOST_MESSAGE
    return None


def skip_module_unless_in_host() -> None:
    """Call at the top of an in-process test module: skips the whole module (one line in the report) when this
    process is not the host's Python."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)


def host() -> types.SimpleNamespace:
    """The imported host and pack, or a pytest skip saying why not."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    found, _ = find_host()
    return _import_host(str(found))


def register_models(models_dir: pathlib.Path) -> None:
    """Make ComfyUI's model folders (diffusion_models, text_encoders, vae, loras) list the files under ``models_dir``."""
    import folder_paths

    for folder in ("diffusion_models", "text_encoders", "vae", "loras"):
        folder_paths.add_model_folder_path(folder, str(models_dir / folder), is_default=True)


def run_node(node_class, **inputs):
    """Run a node the way the executor does, for V3 (``execute`` -> NodeOutput) and V1 (``FUNCTION``) classes
    alike; returns the output tuple."""
    if hasattr(node_class, "FUNCTION") and not hasattr(node_class, "define_schema"):
        return tuple(getattr(node_class(), node_class.FUNCTION)(**inputs))
    output = node_class.execute(**inputs)
    return tuple(output.args) if hasattr(output, "args") else tuple(output)


def sampler_inputs(pack_models, **overrides) -> dict:
    """Inputs of the pack's Sampler node for ``pack_models`` (cond, uncond, CONDITIONING): a 2-step Custom run at
    32 x 32, with ``overrides`` replacing any of them."""
    cond, uncond, conditioning = pack_models
    inputs = dict(cond_model=cond, uncond_model=uncond, conditioning=conditioning, preset="Custom", steps=2, mu=0.0,
                  std=1.75, guidance_schedule="7,3", seed=0, width=32, height=32, batch_size=1)
    inputs.update(overrides)
    return inputs


def native_node(module_name: str, class_name: str):
    """A native node class, e.g. ``native_node("comfy_extras.nodes_custom_sampler", "SamplerCustomAdvanced")``."""
    return getattr(importlib.import_module(module_name), class_name)


def record_progress(monkeypatch, interrupt: bool = False) -> list:
    """Patch ComfyUI's ``ProgressBar.update_absolute`` to record ``(value, total)`` of every update (passed on to
    the real bar); with ``interrupt``, each update presses Cancel instead. Returns the list the updates go to."""
    import comfy.model_management
    import comfy.utils

    updates = []
    original = comfy.utils.ProgressBar.update_absolute

    def update(bar, value, total=None, preview=None):
        updates.append((value, total))
        if interrupt:
            comfy.model_management.interrupt_current_processing(True)
            return None
        return original(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update)
    return updates
