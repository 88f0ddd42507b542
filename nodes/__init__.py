"""ComfyUI adapters of the Ideogram 4 pack. Every ``comfy`` import of the pack lives in this package.

Each node is a thin adapter over one call into the host-agnostic core package ``ideogram4`` (a sibling folder).
The core imports itself by its absolute name (``from ideogram4.ops import ...``), but ComfyUI loads this pack
from its folder without putting that folder on ``sys.path``; :func:`_make_core_importable` does that once.
"""

import pathlib
import sys

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _make_core_importable() -> None:
    """Make ``import ideogram4`` resolve to this pack's core, and refuse a different package of that name."""
    core_dir = PACK_ROOT / "ideogram4"
    if "ideogram4" not in sys.modules and str(PACK_ROOT) not in sys.path:
        # Appended, not prepended: the pack folder must never shadow ComfyUI's own top-level modules
        # (ComfyUI has a nodes.py; this folder has a nodes/ package).
        sys.path.append(str(PACK_ROOT))
    import ideogram4

    found = pathlib.Path(ideogram4.__file__).resolve().parent
    if found != core_dir:
        raise ImportError(
            f"Ideogram 4 (reference): another package named 'ideogram4' ({found}) is imported instead of this "
            f"pack's core ({core_dir}). Remove or rename the other package (another custom node pack or a pip "
            "package called ideogram4) and restart ComfyUI."
        )


_make_core_importable()
