"""What the server host tests share: finding the host, one server per test module, workflows as API prompts.

Each ``test_server_*.py`` module makes one module-scoped fixture from :func:`serve` (a server costs ~30 s to
start on two cores, so modules share it across their tests) and converts the example workflows with
:func:`workflow_prompt`, shrinking sizes so tiny stand-in models run in seconds.
"""

import json
import pathlib
import shutil

import pytest

from tools import hostfind
from tools.comfy_server import SINGLE_THREAD_ENV, ComfyServer, PromptRejected, execution_error, succeeded
from tools.workflow_api import nodes_of_type, to_api_prompt

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
WORKFLOW_NAMES = sorted(path.name for path in WORKFLOWS_DIR.glob("*.json"))
SIZE_INPUTS = {"Ideogram4RefSampler", "Ideogram4RefScheduler", "Ideogram4RefEmptyLatent", "Ideogram4RefPromptEnhancer"}


def require_host() -> tuple[pathlib.Path, pathlib.Path]:
    """(host folder, host python), or skip the calling module with a message saying why."""
    host = hostfind.find_comfyui()
    if host is None:
        pytest.skip(hostfind.describe_missing_host(), allow_module_level=True)
    python = hostfind.host_python(host)
    if python is None:
        pytest.skip(hostfind.describe_unusable_host(f"ComfyUI host {host} has no .venv/bin/python; set COMFYUI_PYTHON "
                                                    "to its interpreter"), allow_module_level=True)
    return host, python


def serve(tmp_path_factory, name: str, extra_args=(), prepare_models=None, layout="extra_model_paths"):
    """Generator for a module-scoped fixture: tiny weights, one started server, stopped (by PID) afterwards.

    ``prepare_models(models_dir, paths)`` may add files (e.g. wrongly placed ones) before the server starts;
    ``layout``: how the pack is installed in the host (:class:`tools.comfy_server.ComfyServer`).
    """
    from tools.make_tiny_weights import write_tiny_weights  # imports torch and the core: only when a host exists

    host, python = require_host()
    work = tmp_path_factory.mktemp(name)
    models_dir = work / "models"
    paths = write_tiny_weights(models_dir, seed=0)
    if prepare_models is not None:
        prepare_models(models_dir, paths)
    server = ComfyServer(host, python, models_dir, extra_args=extra_args, work_dir=work / "server", env=SINGLE_THREAD_ENV,
                         layout=layout)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / name).read_text(encoding="utf-8"))


def workflow_prompt(server, name: str, width: int = 64, height: int = 64, **overrides) -> dict:
    """The workflow ``name`` as an API prompt, its sizes set to ``width`` x ``height`` and any other input of the
    pack's sampling nodes (``steps=...``, ``preset=...``) replaced where that node has it."""
    prompt = to_api_prompt(load_workflow(name), server.client.object_info())
    for node in prompt.values():
        if node["class_type"] in SIZE_INPUTS:
            node["inputs"]["width"], node["inputs"]["height"] = width, height
        for key, value in overrides.items():
            if key in node["inputs"] and node["class_type"].startswith("Ideogram4Ref"):
                node["inputs"][key] = value
    return prompt


def the_node(prompt: dict, class_type: str) -> dict:
    """The one API node of ``class_type`` (its ``inputs`` may be edited in place)."""
    found = nodes_of_type(prompt, class_type)
    assert len(found) == 1, f"expected one {class_type} in the prompt, found {len(found)}"
    return found[0]


def run_ok(server, prompt: dict, timeout: float = 300.0) -> tuple[dict, list[bytes]]:
    """Run ``prompt``; its /history entry and saved images, failing with the server's own error otherwise."""
    entry = server.client.run(prompt, timeout=timeout)
    if not succeeded(entry):
        pytest.fail(f"prompt failed: {json.dumps(execution_error(entry) or entry.get('status'), indent=1)[:3000]}\n"
                    f"{server.log_tail(3000)}")
    return entry, server.client.images(entry)


def node_error_message(server, prompt: dict, timeout: float = 300.0) -> str:
    """The error a bad prompt comes back with, as one string: the HTTP 400 ``node_errors`` (message and details of
    each) or the ``execution_error`` of the run. Fails the test if the prompt succeeds."""
    try:
        prompt_id = server.client.queue_prompt(prompt)
    except PromptRejected as rejected:
        parts = [rejected.body.get("error", {}).get("message", "")]
        for node_id, node in rejected.node_errors.items():
            for error in node.get("errors", []):
                parts.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
        return "\n".join(parts)
    entry = server.client.wait_for_history(prompt_id, timeout=timeout)
    error = execution_error(entry)
    if error is None:
        pytest.fail(f"expected the prompt to fail, but it ended with status {entry.get('status')}")
    return f"node {error.get('node_id')} ({error.get('node_type')}): {error.get('exception_type')}: {error.get('exception_message')}"


def copy_into(models_dir: pathlib.Path, source: pathlib.Path, folder: str, name: str | None = None) -> str:
    """Copy a model file into another model folder (e.g. the VAE into diffusion_models); its name there."""
    target = models_dir / folder / (name or source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target.name
