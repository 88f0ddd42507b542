"""The V3 extension ComfyUI gets from ``comfy_entrypoint``: the list of the pack's nodes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .caption_node import Caption
from .caption_route import register_routes
from .compat import warn_if_older_than_supported
from .dit_loader import DiTLoader
from .lora_loader import LoraLoader
from .noise_latent import EmptyLatent, Noise
from .prompt_enhancer import PromptEnhancer
from .sampler_node import Sampler
from .scheduler_guider import Guider, Scheduler
from .text_encoder_nodes import TextEncode, TextEncoderLoader
from .vae_nodes import VAEDecode, VAELoader

NODES: list[type[io.ComfyNode]] = [
    Caption,
    DiTLoader,
    LoraLoader,
    TextEncoderLoader,
    TextEncode,
    PromptEnhancer,
    Sampler,
    Scheduler,
    Guider,
    Noise,
    EmptyLatent,
    VAELoader,
    VAEDecode,
]


class Ideogram4Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        warn_if_older_than_supported()
        # Here rather than in on_load, which ComfyUI 0.3.64 does not call.
        register_routes()
        return list(NODES)
