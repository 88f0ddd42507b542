"""Ideogram 4 Noise (the official noise stream as a native NOISE) and Empty Latent (zeros in the LATENT layout)."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.latent import TOKEN_CHANNELS, tokens_to_comfy_latent
from ..ideogram4.sampler import make_noise

from .settings import (CATEGORY, batch_size_input, check_size, height_input, raise_problems, seed_input,
                       size_problems, validation_result, width_input)

EMPTY_LATENT_NAME = "Ideogram 4 Empty Latent"


def official_noise_latent(batch: int, grid_h: int, grid_w: int, seed: int, device=None) -> torch.Tensor:
    """The official initial noise ``(B, gh*gw, 128)`` (one randn draw on the compute device) permuted to the
    LATENT layout ``(B, 128, gh, gw)``; a pure permutation, so the values are the official ones."""
    device = comfy.model_management.get_torch_device() if device is None else device
    tokens = make_noise(batch, grid_h * grid_w, seed, device)
    return tokens_to_comfy_latent(tokens, grid_h, grid_w)


class OfficialNoise:
    """A native NOISE object (``seed`` + ``generate_noise(latent_dict)``) for ``SamplerCustomAdvanced``.

    Shape comes from the input LATENT; one noise tensor is drawn for the whole batch like the official pipeline
    (a LATENT ``batch_index`` is therefore not used).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != TOKEN_CHANNELS:
            raise ValueError(
                f"Ideogram 4 Noise: expected an Ideogram 4 / FLUX.2 LATENT of shape (B, {TOKEN_CHANNELS}, H/16, W/16), "
                f"got {tuple(samples.shape)}; start from the Ideogram 4 Empty Latent node."
            )
        batch, _, grid_h, grid_w = samples.shape
        raise_problems("Ideogram 4 Noise", size_problems(width=grid_w * PIXELS_PER_TOKEN,
                                                         height=grid_h * PIXELS_PER_TOKEN))
        noise = official_noise_latent(batch, grid_h, grid_w, self.seed)
        return noise.to(device=samples.device)


class Noise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefNoise",
            display_name="Ideogram 4 Noise (reference)",
            category=CATEGORY,
            description="The official Ideogram 4 initial noise for SamplerCustomAdvanced (same seed, same noise as "
                        "the Ideogram 4 Sampler node and the official pipeline on the same device).",
            inputs=[seed_input()],
            outputs=[io.Noise.Output(tooltip="Noise source for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(OfficialNoise(seed))


class EmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefEmptyLatent",
            display_name="Ideogram 4 Empty Latent (reference)",
            category=CATEGORY,
            description="An empty Ideogram 4 LATENT: zeros of shape (batch, 128, height/16, width/16).",
            inputs=[width_input(), height_input(), batch_size_input()],
            outputs=[io.Latent.Output(tooltip="Zeros in the Ideogram 4 / FLUX.2 LATENT layout.")],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None) -> bool | str:
        problems = size_problems(width=width, height=height)
        return validation_result(EMPTY_LATENT_NAME, problems)

    @classmethod
    def execute(cls, width: int, height: int, batch_size: int = 1) -> io.NodeOutput:
        grid_h, grid_w = check_size(width, height, EMPTY_LATENT_NAME)
        samples = torch.zeros((batch_size, TOKEN_CHANNELS, grid_h, grid_w), dtype=torch.float32,
                              device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})
