"""Opt-in ``torch.compile`` of the DiT's transformer blocks, applied to a built model in place and undoable.

Only ``TransformerBlock.forward`` is compiled (the part repeated 34 times); the embeddings, RoPE tables and the
final layer stay eager. The eager path of :mod:`ideogram4.dit` is untouched: a model is compiled only when a
caller asks for it.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .dit import Ideogram4DiT, TransformerBlock

# Inductor options for every compiled block. emulate_precision_casts: by default Inductor keeps float32
# intermediates inside a fused kernel and rounds to bf16 only when a value is stored, so a bf16 model computes
# e.g. ``norm(h) * (1 + scale)`` without eager's bf16 rounding after each op, which moves the output by ~5e-3
# relative (as much as the pack differs from native ComfyUI). With emulation on, Inductor rounds every
# intermediate to its eager dtype where eager does, so the compiled blocks reproduce the eager bits in bf16 and
# compiling stays a pure speed setting.
_INDUCTOR_OPTIONS = {"emulate_precision_casts": True}

# Instance attribute marking a compiled block; holds the compiled bound forward (shadows the class's forward).
_COMPILED_MARK = "_ideogram4_compiled_forward"


@functools.lru_cache(maxsize=None)
def _compiled_forward(forward: Callable, dynamic: bool | None) -> Callable:
    # One compiled function per block class (and dynamic setting), shared by every block: with dynamo inlining
    # nn.Modules, the block's parameters are graph inputs, so all blocks reuse one graph per input shape
    # instead of compiling 34 copies.
    return torch.compile(forward, dynamic=dynamic, options=dict(_INDUCTOR_OPTIONS))


def _blocks(model: Ideogram4DiT) -> list[TransformerBlock]:
    if not isinstance(model, Ideogram4DiT):
        raise TypeError(f"ideogram4.compile: expected an Ideogram4DiT, got {type(model).__name__}. Pass the core "
                        "DiT (in ComfyUI: the patcher's model.diffusion_model).")
    return [block for block in model.layers if isinstance(block, TransformerBlock)]


def compile_transformer_blocks(model: Ideogram4DiT, *, dynamic: bool | None = None) -> None:
    """Replace each block's forward with a compiled one (in place; idempotent: compiled blocks are skipped).

    ``dynamic`` is passed to ``torch.compile`` (None: static shapes first, dynamic after a size change).
    Compilation happens lazily, at the first forward of each input shape. Undo with
    :func:`uncompile_transformer_blocks`.
    """
    for block in _blocks(model):
        if _COMPILED_MARK in vars(block):
            continue
        forward = functools.partial(_compiled_forward(type(block).forward, dynamic), block)
        # The instance attribute shadows the class method, so nn.Module.__call__ (hooks included) runs it.
        block.forward = forward
        setattr(block, _COMPILED_MARK, forward)


def uncompile_transformer_blocks(model: Ideogram4DiT) -> None:
    """Restore the eager forward of every block compiled by :func:`compile_transformer_blocks`."""
    for block in _blocks(model):
        if _COMPILED_MARK in vars(block):
            if vars(block).get("forward") is vars(block)[_COMPILED_MARK]:
                del block.forward
            delattr(block, _COMPILED_MARK)

