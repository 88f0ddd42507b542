"""The pack finds what it needs from the running ComfyUI wherever the pack and that ComfyUI are installed.

Every server here runs without ``COMFYUI_PATH`` (tools/comfy_server.py keeps the tests' host variables out of
its environment) and with the Comfy-Org single-file text encoder and no ``tokenizer/`` folder beside it, so the Qwen
tokenizer can only come from the running host's own ``comfy`` package. Two installs: the pack in a
``custom_nodes`` folder outside the ComfyUI folder (``extra_model_paths.yaml``, as the Desktop app has it; this
is also how ``tools.selfcheck`` runs), and the pack in ComfyUI's own ``custom_nodes`` folder
(``--base-directory``).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from host_session import REPO_ROOT, require_host, run_ok, serve, workflow_prompt
from tools.comfy_server import HOST_FINDER_VARIABLES

pytestmark = pytest.mark.host

SELFCHECK_TIMEOUT_S = 600


def _process_environment(pid: int) -> dict[str, str]:
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.fixture(scope="module")
def server_with_pack_in_its_custom_nodes(tmp_path_factory):
    yield from serve(tmp_path_factory, "base_directory", layout="base_directory")


def test_pack_in_comfyuis_own_custom_nodes_folder_runs_the_workflow(server_with_pack_in_its_custom_nodes):
    server = server_with_pack_in_its_custom_nodes
    assert server.pack_link.parent.name == "custom_nodes" and server.pack_link.is_symlink()
    assert not list(server.models_dir.glob("text_encoders/**/tokenizer")), "a tokenizer beside the weights"
    if sys.platform == "linux":
        environment = _process_environment(server.process.pid)
        assert not set(HOST_FINDER_VARIABLES) & set(environment), "the server must not be told where its host is"

    _, images = run_ok(server, workflow_prompt(server, "ideogram4_text_to_image.json"))

    assert len(images) == 1 and images[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_selfcheck_runs_on_a_comfyui_given_only_by_its_folder(tmp_path):
    """The README's self-check on a ComfyUI named by ``--comfyui`` alone: no COMFYUI_PATH, no ComfyUI at
    comfy-cli's default place (an empty home folder), the pack in a custom_nodes folder outside that ComfyUI."""
    host, python = require_host()
    environment = {key: value for key, value in os.environ.items() if key != "COMFYUI_PATH"}
    environment["HOME"] = str(tmp_path / "home")
    environment["COMFYUI_PYTHON"] = str(python)  # the tests' way to name this host's Python; never the server's
    out = tmp_path / "selfcheck.png"

    result = subprocess.run([sys.executable, "-m", "tools.selfcheck", "--comfyui", str(host), "--out", str(out)],
                            cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                            timeout=SELFCHECK_TIMEOUT_S)

    assert result.returncode == 0, f"selfcheck failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
