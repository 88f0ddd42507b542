"""Start a real ComfyUI server with this pack loaded, and talk to it over HTTP and its websocket.

``ComfyServer(host_dir, python, models_dir)`` runs ``main.py --cpu --listen 127.0.0.1 --port <free>`` in the
host's own Python, with the pack installed in one of two ways a user's ComfyUI has it (``layout``):

* ``"extra_model_paths"`` (default): an ``extra_model_paths.yaml`` written to a temp folder adds ``custom_nodes:``,
  a temp folder outside the ComfyUI folder holding only a symlink to this pack (as the Desktop app and shared
  model setups have it), and ``diffusion_models`` / ``text_encoders`` / ``vae`` / ``loras``: the given folder's subfolders;
* ``"base_directory"``: ``--base-directory`` points ComfyUI at a temp folder whose ``custom_nodes/`` holds the
  symlink and whose ``models/`` holds the model folders: the pack sits in ComfyUI's own ``custom_nodes`` folder.

The pack is linked, so the working tree loads without copying. Output, input, temp and user folders are temp
folders too, so the host's own folders are never written.
The server is stopped by its PID (its process group) on ``stop()``, on leaving the ``with`` block, and at
interpreter exit, so a failing test leaks no process.

Only the standard library is used: the tests run in the pack's venv while the server runs in the host's.
"""

import atexit
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from .websocket_lite import WebSocket

PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "comfyui-ideogram4-reference"
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras")
LAYOUTS = ("extra_model_paths", "base_directory")
STARTUP_TIMEOUT_S = 180.0
# For tiny stand-in models: one compute thread. Their matmuls are far too small to gain from threads, and on a
# busy CI machine (tests running beside the server) spinning OpenMP threads make each step ~100x slower.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# Tell the tests and tools (tools/hostfind.py) where a host is; never part of a running server's environment.
HOST_FINDER_VARIABLES = ("COMFYUI_PATH", "COMFYUI_PYTHON")


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer as expected; the message carries its log tail."""


class PromptRejected(RuntimeError):
    """POST /prompt answered with an error (HTTP 400): ``status`` and the decoded ``body``."""

    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"/prompt rejected with HTTP {status}: {json.dumps(body)[:2000]}")

    @property
    def node_errors(self) -> dict:
        return self.body.get("node_errors") or {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(path: pathlib.Path, custom_nodes_dir: pathlib.Path, models_dir: pathlib.Path) -> None:
    """The yaml ComfyUI reads with ``--extra-model-paths-config`` (its own ``utils/extra_config.py`` format)."""
    lines = ["ideogram4_host_tests:", f"    custom_nodes: {json.dumps(str(custom_nodes_dir))}"]
    lines += [f"    {name}: {json.dumps(str(models_dir / name))}" for name in MODEL_FOLDERS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _supported_flags(host_dir: pathlib.Path) -> str:
    cli_args = host_dir / "comfy" / "cli_args.py"
    return cli_args.read_text(encoding="utf-8") if cli_args.is_file() else ""


class ComfyServer:
    """One ComfyUI process. Use as a context manager, or call ``start()`` / ``stop()``."""

    def __init__(self, host_dir, python, models_dir, pack_root=PACK_ROOT, extra_args=(), work_dir=None, env=None,
                 layout="extra_model_paths"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        self.layout = layout
        self.host_dir = pathlib.Path(host_dir)
        self.python = pathlib.Path(python)
        self.models_dir = pathlib.Path(models_dir)
        self.pack_root = pathlib.Path(pack_root)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self._own_tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="ideogram4-host-")
        self.work_dir = pathlib.Path(work_dir or self._own_tmp.name)
        self.port = None
        self.process = None
        self.log_path = self.work_dir / "server.log"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def pack_link(self) -> pathlib.Path:
        """Where the host sees the pack (a symlink to the working tree)."""
        parent = self.work_dir / "base" if self.layout == "base_directory" else self.work_dir
        return parent / "custom_nodes" / PACK_LINK_NAME

    def _install_pack_and_models(self, flags: str) -> list[str]:
        """Link the pack and the model folders for ``self.layout``; the arguments that tell ComfyUI."""
        self.pack_link.parent.mkdir(parents=True, exist_ok=True)
        if not self.pack_link.exists():
            self.pack_link.symlink_to(self.pack_root, target_is_directory=True)
        for name in MODEL_FOLDERS:
            (self.models_dir / name).mkdir(parents=True, exist_ok=True)
        if self.layout == "base_directory":
            if '"--base-directory"' not in flags:
                raise ServerError(f"the ComfyUI at {self.host_dir} has no --base-directory option")
            base = self.pack_link.parent.parent
            for name in MODEL_FOLDERS:
                link = base / "models" / name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(self.models_dir / name, target_is_directory=True)
            return ["--base-directory", str(base)]
        yaml_path = self.work_dir / "extra_model_paths.yaml"
        write_extra_model_paths(yaml_path, self.pack_link.parent, self.models_dir)
        return ["--extra-model-paths-config", str(yaml_path)]

    def _command(self) -> list[str]:
        flags = _supported_flags(self.host_dir)
        install_args = self._install_pack_and_models(flags)
        folders = {name: self.work_dir / name for name in ("output", "input", "temp", "user")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [
            str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-api-nodes", "--output-directory", str(folders["output"]),
            "--input-directory", str(folders["input"]), "--temp-directory", str(folders["temp"]),
            *install_args,
        ]
        # Newer hosts keep a database and settings in the user folder; keep them out of the host's tree.
        if '"--user-directory"' in flags:
            command += ["--user-directory", str(folders["user"])]
        if '"--database-url"' in flags:
            command += ["--database-url", "sqlite:///:memory:"]
        return command + self.extra_args

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> "ComfyServer":
        command = self._command()
        log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        env.pop("PYTHONPATH", None)  # the host's venv must not see the pack venv's packages
        # As a user's ComfyUI runs: the pack must find what it needs from the running host, not from the
        # variables that told the tests where that host is.
        for name in HOST_FINDER_VARIABLES:
            env.pop(name, None)
        self.process = subprocess.Popen(
            command, cwd=self.host_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,  # its own process group: stopped as one, untouched by Ctrl-C
        )
        log.close()
        atexit.register(self.stop)
        self.client = ComfyClient(f"127.0.0.1:{self.port}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode} while starting\n{self.log_tail()}")
            try:
                self.client.system_stats(timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # the group id is the PID we started
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
            except ProcessLookupError:
                pass
        atexit.unregister(self.stop)

    def cleanup(self) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "--- server log (tail) ---\n" + text[-chars:]


class ComfyClient:
    """HTTP and websocket client for one server address ``host:port``."""

    def __init__(self, address: str):
        self.address = address
        self.client_id = uuid.uuid4().hex

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body=None, timeout: float = 60.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.address}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str, timeout: float = 60.0):
        status, data = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path} answered HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def system_stats(self, timeout: float = 10.0) -> dict:
        return self.get_json("/system_stats", timeout=timeout)

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""))

    def queue_prompt(self, prompt: dict) -> str:
        """POST /prompt; the prompt id, or PromptRejected (with ``node_errors``) when validation fails."""
        status, data = self._request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        body = json.loads(data) if data else {}
        if status != 200 or body.get("node_errors"):
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait_for_history(self, prompt_id: str, timeout: float = 300.0, poll_s: float = 0.1) -> dict:
        """The finished prompt's /history entry (success, error or interruption alike)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)  # ComfyUI adds the entry only once the prompt has finished
            if entry is not None:
                return entry
            time.sleep(poll_s)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        status, data = self._request("GET", f"/view?{query}")
        if status != 200:
            raise ServerError(f"/view of {filename!r} answered HTTP {status}")
        return data

    def interrupt(self) -> None:
        status, data = self._request("POST", "/interrupt", {})
        if status != 200:
            raise ServerError(f"/interrupt answered HTTP {status}: {data[:300]!r}")

    def images(self, entry: dict) -> list[bytes]:
        """The bytes of every image a finished prompt saved (all output nodes, in node-id order)."""
        found = []
        for node_id in sorted(entry.get("outputs", {}), key=str):
            for image in entry["outputs"][node_id].get("images", []):
                found.append(self.view(image["filename"], image.get("subfolder", ""), image.get("type", "output")))
        return found

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue ``prompt`` and return its /history entry once it has finished."""
        return self.wait_for_history(self.queue_prompt(prompt), timeout=timeout)

    # -- websocket -------------------------------------------------------------------------------------------
    def open_websocket(self) -> WebSocket:
        """The event stream for this client id (open it before queueing to see every event of a prompt)."""
        host, port = self.address.rsplit(":", 1)
        return WebSocket(host, int(port), f"/ws?clientId={self.client_id}")


def execution_error(entry: dict) -> dict | None:
    """The ``execution_error`` message of a finished /history entry, or None when it did not fail."""
    for name, data in entry.get("status", {}).get("messages", []):
        if name == "execution_error":
            return data
    return None


def succeeded(entry: dict) -> bool:
    return entry.get("status", {}).get("status_str") == "success"
