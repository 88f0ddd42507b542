"""Render the template thumbnails: run every example workflow on a real ComfyUI with the pack, save its image.

    python -m tools.render_thumbnails [--comfyui PATH] [--size 128] [--only NAME.json ...]

ComfyUI's template browser shows ``workflows/<name>.jpg`` beside ``workflows/<name>.json`` (it asks for
``/api/workflow_templates/<pack folder>/<name>.jpg``). Each thumbnail here is the image the workflow produces when it
runs headless with the tiny stand-in weights (tools.make_tiny_weights): real output of the pack's nodes (the
random weights make it noise), at SIZE x SIZE, written as a small JPEG.
"""

import argparse
import io
import json
import pathlib
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: the imports below need the pack's folder on the module path
    raise SystemExit(f"run it from the pack's folder as a module: python -m tools.{pathlib.Path(__file__).stem} ...")

from tools.comfy_server import SINGLE_THREAD_ENV, ComfyServer, execution_error, succeeded  # noqa: E402
from tools.selfcheck import SIZED_NODES, SelfCheckFailed, _host  # noqa: E402
from tools.workflow_api import to_api_prompt  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"
THUMBNAIL_PIXELS = 256


def thumbnail_path(workflow_path: pathlib.Path) -> pathlib.Path:
    return workflow_path.with_suffix(".jpg")


def render_thumbnails(comfyui=None, size=128, log=print, names=None) -> list[pathlib.Path]:
    from PIL import Image

    from tools.make_tiny_weights import write_tiny_weights

    host, python = _host(comfyui)
    written = []
    with tempfile.TemporaryDirectory(prefix="ideogram4-thumbnails-") as tmp:
        tmp = pathlib.Path(tmp)
        write_tiny_weights(tmp / "models", seed=0)
        with ComfyServer(host, python, tmp / "models", work_dir=tmp / "server", env=SINGLE_THREAD_ENV) as server:
            # The inpainting example's picture, as the host tests make it (its transparent half is the mask).
            from build_workflows import INPAINT_IMAGE
            from test_server_workflows import write_inpaint_image

            write_inpaint_image(server.work_dir / "input" / INPAINT_IMAGE)
            object_info = server.client.object_info()
            for path in sorted(WORKFLOWS_DIR.glob("*.json")):
                if names and path.name not in names:
                    continue
                prompt = to_api_prompt(json.loads(path.read_text(encoding="utf-8")), object_info)
                for node in prompt.values():
                    if node["class_type"] in SIZED_NODES:
                        node["inputs"]["width"] = node["inputs"]["height"] = size
                entry = server.client.run(prompt, timeout=600)
                if not succeeded(entry):
                    raise SelfCheckFailed(f"{path.name} failed: {execution_error(entry)}\n{server.log_tail(2000)}")
                (png,) = server.client.images(entry)
                image = Image.open(io.BytesIO(png)).convert("RGB")
                image = image.resize((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS), Image.Resampling.NEAREST)
                target = thumbnail_path(path)
                image.save(target, "JPEG", quality=80)
                written.append(target)
                log(f"wrote {target}")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="ComfyUI folder (default: the host the tests find)")
    parser.add_argument("--size", type=int, default=128, help="image size the workflows run at (multiple of 16)")
    parser.add_argument("--only", nargs="*", help="workflow file names to render (default: all)")
    args = parser.parse_args(argv)
    try:
        render_thumbnails(args.comfyui, args.size, names=args.only)
    except SelfCheckFailed as error:
        print(f"thumbnails not rendered: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
