"""ComfyUI adapters of the Ideogram 4 pack. Every ``comfy`` import of the pack lives in this package.

Each node is a thin adapter over one call into the host-agnostic core package ``ideogram4`` (a sibling folder),
imported relatively (``from ..ideogram4.sampler import sample``): ComfyUI loads the pack as a package named after
its folder, so the core is never a top-level module here and cannot clash with another ``ideogram4`` (the
official pip package, another node pack).
"""
