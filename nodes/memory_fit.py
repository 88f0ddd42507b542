"""Refuse, before anything is allocated, an image whose DiT activations cannot fit the load device.

ComfyUI can offload every weight, but not the activations of a forward: they must fit the device's memory in
all. The estimate is :func:`ideogram4.limits.activation_bytes` (memory-efficient attention, one block's peak).
"""

from __future__ import annotations

import comfy.model_management

from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.dit_config import DiTConfig
from ..ideogram4.limits import activation_bytes, largest_square_side

GIB = 1 << 30


def check_activations_fit(node: str, config: DiTConfig, batch: int, grid_h: int, grid_w: int, text_tokens: int,
                          element_bytes: int, device) -> None:
    """ValueError naming ``node`` when one forward of ``batch`` images of ``grid_h x grid_w`` tokens needs more
    memory than ``device`` has in all; the message says the largest square size that fits."""
    total = comfy.model_management.get_total_memory(device)
    needed = activation_bytes(config, batch, grid_h * grid_w, text_tokens, element_bytes)
    if needed <= total:
        return
    side = largest_square_side(config, batch, text_tokens, element_bytes, total)
    fits = (f"at most about {side}x{side} fits at batch {batch}" if side else
            f"not even one image token fits at batch {batch}")
    raise ValueError(
        f"{node}: a {grid_w * PIXELS_PER_TOKEN}x{grid_h * PIXELS_PER_TOKEN} image at batch {batch} needs about "
        f"{needed / GIB:.1f} GiB of "
        f"activations on {device}, which has {total / GIB:.1f} GiB in all (weights can be offloaded, activations "
        f"cannot); {fits}. Lower width/height or batch_size.")
