"""Ideogram 4 VAE Loader and VAE Decode.

The loader returns :class:`Ideogram4VAE`, a VAE value that the pack's decode node and ComfyUI's native
VAEDecode / VAEDecodeTiled / VAEEncode can all use. Decoding always follows the official path (de-normalise with
Ideogram's constants, unpatchify, FLUX.2 decoder; :func:`ideogram4.vae.decode_latent_tokens`), never the FLUX.2
BatchNorm statistics ComfyUI's own FLUX.2 VAE applies. The decode node also accepts ComfyUI's native FLUX.2
``VAE``: its weights are reused with the Ideogram de-normalisation.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from ..ideogram4.constants import PIXELS_PER_TOKEN, TOKEN_CHANNELS
from ..ideogram4.latent import comfy_latent_to_tokens, decoded_to_image, image_to_model_input, tokens_to_comfy_latent
from ..ideogram4.vae import (
    DEFAULT_TILE_OVERLAP,
    DEFAULT_TILE_SIZE,
    Flux2AutoEncoder,
    decode_latent_tokens,
    encode_image_to_tokens,
)
from ..ideogram4.vae_checkpoint import load_vae

from . import compat
from .settings import CATEGORY

VAE_FOLDER = "vae"
RAW_LATENT_PER_LATENT = 2  # the VAE's own latent is 2x finer than the LATENT (2x2 patches)


class Ideogram4VAE:
    """A VAE value for ComfyUI: the FLUX.2 autoencoder in its own patcher, Ideogram's latent convention.

    ``decode(samples (B, 128, gh, gw)) -> IMAGE (B, 16*gh, 16*gw, 3)`` and ``encode(IMAGE) -> samples`` are what
    ComfyUI's VAE nodes call. A plain ``ModelPatcher``: the core loader fills the weights before the patcher
    exists, which the dynamic-VRAM patcher does not support.
    """

    def __init__(self, patcher, dtype: torch.dtype):
        self.patcher = patcher  # its model is the Flux2AutoEncoder
        self.dtype = dtype

    # --- what ComfyUI's VAE nodes call ----------------------------------------------------------------------

    def decode(self, samples: torch.Tensor, tiled: bool = False, tile_size: int = DEFAULT_TILE_SIZE,
               tile_overlap: int = DEFAULT_TILE_OVERLAP) -> torch.Tensor:
        """LATENT samples (B, 128, gh, gw) -> IMAGE (B, 16*gh, 16*gw, 3) float32 (official bytes, see
        :func:`ideogram4.latent.decoded_to_image`). Tile sizes are in the VAE's latent pixels (8 image px)."""
        if samples.ndim != 4 or samples.shape[1] != TOKEN_CHANNELS:
            raise ValueError(f"Ideogram 4 VAE: expected a LATENT (B, {TOKEN_CHANNELS}, H/{PIXELS_PER_TOKEN}, "
                             f"W/{PIXELS_PER_TOKEN}), got {tuple(samples.shape)}.")
        _, _, grid_h, grid_w = samples.shape
        model = self._loaded_model(samples.shape[0] * grid_h * grid_w)
        tokens = comfy_latent_to_tokens(samples.float())
        pixels = decode_latent_tokens(model, tokens, grid_h, grid_w, self.dtype, device=self.patcher.load_device,
                                      tiled=tiled, tile_size=tile_size, tile_overlap=tile_overlap)
        return decoded_to_image(pixels).to(comfy.model_management.intermediate_device())

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        """VAEDecodeTiled's call; ``tile_x``/``overlap`` arrive in LATENT positions (16 px)."""
        tile = DEFAULT_TILE_SIZE if tile_x is None else RAW_LATENT_PER_LATENT * min(tile_x, tile_y or tile_x)
        overlap = DEFAULT_TILE_OVERLAP if overlap is None else RAW_LATENT_PER_LATENT * overlap
        return self.decode(samples, tiled=True, tile_size=tile, tile_overlap=min(overlap, (tile - 1) // 2))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE (B, H, W, C) -> LATENT samples (B, 128, H//16, W//16) (img2img start). Sides that are not
        multiples of 16 are cropped to them (bottom/right), as ComfyUI's own VAE.encode does."""
        height, width = pixels.shape[1], pixels.shape[2]
        pixels = pixels[:, : height // PIXELS_PER_TOKEN * PIXELS_PER_TOKEN, : width // PIXELS_PER_TOKEN * PIXELS_PER_TOKEN]
        model = self._loaded_model(pixels.shape[0] * pixels.shape[1] * pixels.shape[2] // PIXELS_PER_TOKEN ** 2)
        tokens = encode_image_to_tokens(model, image_to_model_input(pixels), self.dtype,
                                        device=self.patcher.load_device)
        grid_h, grid_w = pixels.shape[1] // PIXELS_PER_TOKEN, pixels.shape[2] // PIXELS_PER_TOKEN
        return tokens_to_comfy_latent(tokens, grid_h, grid_w).to(comfy.model_management.intermediate_device())

    def encode_tiled(self, pixels, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        """VAEEncodeTiled's call. The encoder's memory is modest next to the DiTs, so it encodes in one piece."""
        return self.encode(pixels)

    def spacial_compression_decode(self) -> int:
        return PIXELS_PER_TOKEN

    def spacial_compression_encode(self) -> int:
        return PIXELS_PER_TOKEN

    def temporal_compression_decode(self):
        return None

    # --------------------------------------------------------------------------------------------------------

    def _loaded_model(self, latent_positions: int) -> Flux2AutoEncoder:
        """The autoencoder, its weights loaded for a run over ``latent_positions`` LATENT positions."""
        # Activation memory of the FLUX.2 decoder, roughly: 512 channels at 8x the latent's pixel count.
        memory = latent_positions * 4 * 512 * 64 * torch.finfo(self.dtype).bits // 8
        comfy.model_management.load_models_gpu([self.patcher], memory_required=memory)
        return self.patcher.model


class NativeFlux2VAEView(Ideogram4VAE):
    """ComfyUI's native FLUX.2 ``VAE`` used the Ideogram 4 way, for one call: its own patcher loads its weights, and
    a core autoencoder built around those very tensors (no copy, nothing kept afterwards; ``comfy.ops.manual_cast``
    layers fetch any weight ComfyUI left offloaded) decodes with Ideogram's de-normalisation."""

    def _loaded_model(self, latent_positions: int) -> Flux2AutoEncoder:
        native = super()._loaded_model(latent_positions)
        state = {key: value for key, value in native.state_dict().items() if value.is_floating_point()}
        return load_vae(state, dtype=self.dtype, operations=comfy.ops.manual_cast, share_tensors=True)


def build_vae(path_or_state_dict) -> Ideogram4VAE:
    """An :class:`Ideogram4VAE` from a FLUX.2 VAE file (BFL/ComfyUI or diffusers layout) or a state dict."""
    load_device = comfy.model_management.vae_device()
    offload_device = comfy.model_management.vae_offload_device()
    dtype = comfy.model_management.vae_dtype(load_device, [torch.bfloat16, torch.float32])
    model = load_vae(path_or_state_dict, dtype=dtype, device=offload_device, operations=compat.EagerLoadOps)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    return Ideogram4VAE(patcher, dtype)


def as_ideogram4_vae(vae) -> Ideogram4VAE:
    """The pack VAE itself, or a :class:`NativeFlux2VAEView` of ComfyUI's native ``VAE`` (a VAE that is not FLUX.2
    raises a CheckpointError saying what it is when it decodes). ComfyUI's VAE object is left as it is."""
    if isinstance(vae, Ideogram4VAE):
        return vae
    if not isinstance(vae, comfy.sd.VAE):
        raise TypeError(f"Ideogram 4 VAE Decode: expected a VAE, got {type(vae).__name__}.")
    return NativeFlux2VAEView(vae.patcher, vae.vae_dtype)


class VAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefVAELoader",
            display_name="Ideogram 4 VAE Loader (reference)",
            category=CATEGORY,
            description="Loads the FLUX.2 VAE for Ideogram 4 (decodes with Ideogram's latent statistics; also works "
                        "with the native VAE Decode / VAE Encode nodes).",
            inputs=[
                io.Combo.Input("vae_name", options=folder_paths.get_filename_list(VAE_FOLDER),
                               tooltip="The FLUX.2 VAE in models/vae, e.g. flux2-vae.safetensors (BFL/ComfyUI or "
                                       "diffusers layout)."),
            ],
            outputs=[io.Vae.Output(tooltip="The Ideogram 4 VAE.")],
        )

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        return io.NodeOutput(build_vae(folder_paths.get_full_path_or_raise(VAE_FOLDER, vae_name)))


class VAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefVAEDecode",
            display_name="Ideogram 4 VAE Decode (reference)",
            category=CATEGORY,
            description="Decodes an Ideogram 4 LATENT the official way (Ideogram's de-normalisation, FLUX.2 decoder, "
                        "official rounding).",
            inputs=[
                io.Latent.Input("samples", tooltip="The Ideogram 4 LATENT to decode."),
                io.Vae.Input("vae", tooltip="The Ideogram 4 VAE, or ComfyUI's native FLUX.2 VAE (its weights are "
                                            "used with Ideogram's de-normalisation)."),
                io.Boolean.Input("tiled", default=False,
                                 tooltip="Decode in overlapping 1024 px tiles to save memory on large images "
                                         "(tiles cross-fade; output can differ slightly from a whole decode)."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae, tiled: bool = False) -> io.NodeOutput:
        return io.NodeOutput(as_ideogram4_vae(vae).decode(samples["samples"], tiled=tiled))
