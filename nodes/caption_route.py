"""The pack's HTTP routes for its web extension, on ComfyUI's own server (``PromptServer.instance.routes``).

* ``POST /ideogram4_ref/caption/validate``: the caption editor's live check (:func:`ideogram4.caption_studio.check_request`,
  the pack's one implementation of the caption rules);
* ``GET /ideogram4_ref/options``: frame sizes, known style values and the sampler presets' values.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from ..ideogram4.caption_studio import check_request, editor_options
from . import compat
from .settings import CUSTOM, PRESETS

VALIDATE_PATH = "/ideogram4_ref/caption/validate"
OPTIONS_PATH = "/ideogram4_ref/options"
_registered = False


async def validate_handler(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    return web.json_response(check_request(body), dumps=lambda value: json.dumps(value, ensure_ascii=False))


async def options_handler(request: web.Request) -> web.Response:
    return web.json_response(editor_options(PRESETS, CUSTOM))


def register_routes() -> None:
    """Add the routes once (ComfyUI adds its route table to the app after the custom nodes are loaded)."""
    global _registered
    if _registered:
        return
    instance = compat.prompt_server()
    if instance is None:  # ComfyUI imported without its server (a tool, in-process use): nothing serves the editor
        logging.debug("Ideogram 4: no ComfyUI server instance; the pack's routes are not added.")
        return
    instance.routes.post(VALIDATE_PATH)(validate_handler)
    instance.routes.get(OPTIONS_PATH)(options_handler)
    _registered = True
