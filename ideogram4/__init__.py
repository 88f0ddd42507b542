"""Ideogram 4 inference, host-agnostic: DiT, text encoder, schedule, sampler, VAE and checkpoint loading.

Nothing here imports ComfyUI. Modules that hold weights take ``operations=`` (see :mod:`ideogram4.ops`) so a
host can substitute its own layer classes (ComfyUI passes ``comfy.ops``) and stream weights.
"""
