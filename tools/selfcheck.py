"""Self-check: run the text-to-image example workflow headless on a real ComfyUI, with tiny stand-in models.

    python -m tools.selfcheck [--comfyui PATH] [--out selfcheck.png] [--size 64]

Writes tiny random weights (tools.make_tiny_weights) to a temp folder, starts ComfyUI from PATH (default: the
host the tests find: COMFYUI_PATH, else the ComfyUI this pack is installed in) with this pack
loaded, runs workflows/ideogram4_text_to_image.json at SIZE x SIZE, and writes the resulting PNG to --out.
The image is noise (the weights are random): the check is that every node of the pack loads and runs in that
ComfyUI. Exits 0 on success; otherwise prints what failed (with the server log's tail) and exits 1.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: the imports below need the pack's folder on the module path
    raise SystemExit(f"run it from the pack's folder as a module: python -m tools.{pathlib.Path(__file__).stem} ...")

from tools import hostfind  # noqa: E402
from tools.comfy_server import (  # noqa: E402
    SINGLE_THREAD_ENV, ComfyServer, PromptRejected, ServerError, execution_error, succeeded)
from tools.workflow_api import WorkflowError, to_api_prompt  # noqa: E402

WORKFLOW = REPO_ROOT / "workflows" / "ideogram4_text_to_image.json"
SIZED_NODES = {"Ideogram4RefSampler", "Ideogram4RefScheduler", "Ideogram4RefEmptyLatent"}


class SelfCheckFailed(Exception):
    pass


def _host(path_arg) -> tuple[pathlib.Path, pathlib.Path]:
    host = pathlib.Path(path_arg).expanduser().resolve() if path_arg else hostfind.find_comfyui()
    if host is None:
        raise SelfCheckFailed(hostfind.describe_missing_host() + " (or pass --comfyui PATH)")
    if not (host / "main.py").is_file():
        raise SelfCheckFailed(f"{host} is not a ComfyUI folder (no main.py)")
    python = hostfind.host_python(host)
    if python is None:
        raise SelfCheckFailed(f"no Python found for {host}: expected {host}/.venv/bin/python, or set COMFYUI_PYTHON")
    return host, python


def run_selfcheck(comfyui=None, out=pathlib.Path("selfcheck.png"), size=64, log=print) -> pathlib.Path:
    try:
        from tools.make_tiny_weights import write_tiny_weights
    except Exception as error:  # a broken core is exactly what a self-check must report, not crash on
        raise SelfCheckFailed(f"cannot import the pack's core to write the stand-in models: {error!r}") from None

    host, python = _host(comfyui)
    with tempfile.TemporaryDirectory(prefix="ideogram4-selfcheck-") as tmp:
        tmp = pathlib.Path(tmp)
        log(f"writing tiny stand-in models to {tmp / 'models'}")
        write_tiny_weights(tmp / "models")
        log(f"starting ComfyUI at {host} (python {python}); this takes ~30 s")
        started = time.monotonic()
        server = ComfyServer(host, python, tmp / "models", work_dir=tmp / "server", env=SINGLE_THREAD_ENV)
        try:
            server.start()
            log(f"server up on port {server.port} after {time.monotonic() - started:.0f} s")
            try:
                prompt = to_api_prompt(json.loads(WORKFLOW.read_text(encoding="utf-8")), server.client.object_info())
            except WorkflowError as error:
                raise SelfCheckFailed(f"{WORKFLOW.name} does not match the nodes this ComfyUI loaded: {error}\n"
                                      f"{server.log_tail()}") from None
            for node in prompt.values():
                if node["class_type"] in SIZED_NODES:
                    node["inputs"]["width"] = node["inputs"]["height"] = size
            try:
                entry = server.client.run(prompt)
            except PromptRejected as rejected:
                raise SelfCheckFailed(f"ComfyUI refused the workflow: {json.dumps(rejected.body, indent=1)}") from None
            if not succeeded(entry):
                error = execution_error(entry) or entry.get("status")
                raise SelfCheckFailed(f"the workflow failed while running: {json.dumps(error, indent=1)}\n"
                                      f"{server.log_tail()}")
            images = server.client.images(entry)
            if len(images) != 1:
                raise SelfCheckFailed(f"expected one image from SaveImage, got {len(images)}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(images[0])
            log(f"ok: {size}x{size} image written to {out} ({time.monotonic() - started:.0f} s in all)")
            return out
        except ServerError as error:
            raise SelfCheckFailed(str(error)) from None
        finally:
            server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the Ideogram 4 text-to-image workflow headless with tiny models.")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH, else the ComfyUI this pack sits in)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("selfcheck.png"), help="where to write the PNG")
    parser.add_argument("--size", type=int, default=64, help="width and height (a multiple of 16)")
    args = parser.parse_args(argv)
    try:
        run_selfcheck(args.comfyui, args.out, args.size)
    except SelfCheckFailed as error:
        print(f"selfcheck FAILED: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
