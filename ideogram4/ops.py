"""The default layer namespace for ``operations=``.

Every module of the pack that holds weights builds its layers from an ``operations`` namespace instead of
``torch.nn`` directly, the way ComfyUI's own models do. Inside ComfyUI the nodes pass ``comfy.ops.*`` so
each weight can be cast or streamed per call; everywhere else this plain ``torch.nn`` namespace is used.
"""

from types import SimpleNamespace

import torch.nn as nn

default_operations = SimpleNamespace(
    Linear=nn.Linear,
    RMSNorm=nn.RMSNorm,
    LayerNorm=nn.LayerNorm,
    Embedding=nn.Embedding,
    Conv2d=nn.Conv2d,
    GroupNorm=nn.GroupNorm,
)


def resolve_operations(operations):
    """``operations`` if given, else the plain ``torch.nn`` namespace."""
    return default_operations if operations is None else operations
