"""ComfyUI entry point of the Ideogram 4 (reference) node pack.

ComfyUI loads this folder as a custom-node package and calls :func:`comfy_entrypoint`, which returns
the V3 extension listing the nodes. Nothing heavy is imported here: torch, comfy and the model code are imported
only when ComfyUI asks for the node list.

This module deliberately defines no ``NODE_CLASS_MAPPINGS``: ComfyUI's loader uses a module's V1 mappings when
they exist and then ignores ``comfy_entrypoint``.
"""

import importlib.util

WEB_DIRECTORY = "./web"

def _v3_api_missing() -> bool:
    """True inside a ComfyUI too old for V3 nodes (it has ``comfy`` but no ``comfy_api.latest``)."""
    try:
        if importlib.util.find_spec("comfy") is None:
            return False  # not inside ComfyUI (a tool importing the package): nothing to check
        return importlib.util.find_spec("comfy_api.latest") is None
    except (ImportError, ValueError):
        return True  # comfy_api itself is missing: a ComfyUI from before the V3 API


if _v3_api_missing():
    # Older hosts only read NODE_CLASS_MAPPINGS and would skip this pack with a vague warning; failing the
    # import instead makes ComfyUI print this message next to the pack's name.
    # The supported versions are stated once (nodes/compat.py, MIN_COMFYUI_VERSION); that module imports comfy
    # internals an old host may lack, so the message points at the README instead of importing it.
    raise ImportError(
        "Ideogram 4 (reference) nodes need a newer ComfyUI (the V3 node API, comfy_api.latest, is missing from "
        "this ComfyUI; the README lists the supported versions). Update ComfyUI (git pull / ComfyUI-Manager "
        "'Update ComfyUI', or a newer portable/desktop build) and restart."
    )


async def comfy_entrypoint():
    """Called by ComfyUI: the extension whose ``get_node_list`` returns the pack's nodes."""
    from .nodes.extension import Ideogram4Extension

    return Ideogram4Extension()
