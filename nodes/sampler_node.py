"""Ideogram 4 Sampler: the official sampling loop (:func:`ideogram4.sampler.sample`) on the two MODELs.

The node draws the official noise on the compute device, builds the official schedule and guidance list, loads
both transformers through ``comfy.model_management.load_models_gpu`` (ComfyUI loads each partially when they do
not fit) and integrates with the core sampler, whose velocity callables run the core velocity functions on the
patchers' models through ComfyUI's diffusion-model call (:func:`.model_wrapper.model_velocity`: wrappers, block
patches and ``transformer_options`` of the MODELs apply; each patcher is prepared with ``pre_run`` and cleaned in a
``finally``). The output LATENT is the core sampler's result permuted to the LATENT layout (bit-identical values).
A LATENT ``noise_mask`` is resized to the latent grid as ComfyUI's samplers do and re-samples only the masked area
(:class:`ideogram4.sampler.InpaintRegion`).
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.sampler_helpers
import torch
from comfy_api.latest import io, ui

from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.latent import comfy_latent_to_tokens, tokens_to_comfy_latent
from ..ideogram4.packing import left_align_text_features
from ..ideogram4.sampler import InpaintRegion, img2img_start, make_noise, sample
from ..ideogram4.schedule import logit_normal_schedule

from . import compat
from .memory_fit import check_activations_fit
from .model_wrapper import model_velocity, sampling_transformer_options, step_transformer_options
from .progress import StepReporter
from .settings import (
    CATEGORY,
    SamplingSettings,
    batch_size_input,
    check_size,
    denoise_input,
    guidance_input,
    height_input,
    ignored_guidance_note,
    model_pair_inputs,
    mu_input,
    preset_input,
    raise_problems,
    resolve_settings,
    schedule_problems,
    seed_input,
    size_problems,
    std_input,
    steps_input,
    validation_result,
    width_input,
)

NODE_NAME = "Ideogram 4 Sampler"


def text_features(conditioning, batch: int) -> tuple[torch.Tensor, list[int] | None]:
    """CONDITIONING ``[[features (1 or B, n, F), {...}], ...]`` -> (features (B, n, F), real lengths or None).

    Only the first entry is used (one prompt per generation, as the official pipeline); an ``attention_mask``
    (1 or B, n) in its options (native text encoders, right-padded) gives the real rows of each sample, which are
    moved to the end (:func:`ideogram4.packing.left_align_text_features`).
    """
    if not conditioning or conditioning[0][0] is None:
        raise ValueError("Ideogram 4 Sampler: the conditioning holds no text features; connect the output of "
                         "Ideogram 4 Text Encode.")
    if len(conditioning) > 1:
        logging.warning("Ideogram 4 Sampler: the conditioning has %d entries; only the first is used.",
                        len(conditioning))
    features, options = conditioning[0][0], conditioning[0][1]
    if features.ndim != 3:
        raise ValueError(f"Ideogram 4 Sampler: expected text features (B, n, F), got {tuple(features.shape)}.")
    if features.shape[0] not in (1, batch):
        raise ValueError(f"Ideogram 4 Sampler: the conditioning has batch {features.shape[0]}, the latent {batch}.")
    lengths = None
    mask = options.get("attention_mask") if isinstance(options, dict) else None
    if mask is not None:
        # Native encoders pad on the right; the official packing wants each row's real tokens last (left padding).
        features, lengths = left_align_text_features(features, mask)
        lengths = lengths * (batch if len(lengths) == 1 else 1)
    return features.expand(batch, -1, -1), lengths


def sample_latent(cond_patcher, uncond_patcher, conditioning, settings: SamplingSettings, seed: int,
                  width: int, height: int, batch_size: int, latent: dict | None = None, denoise: float = 1.0
                  ) -> torch.Tensor:
    """Run the official loop; returns the LATENT samples ``(B, 128, height/16, width/16)`` float32.

    With ``latent`` the image size and batch come from it and ``denoise < 1`` keeps the tail of the schedule
    (:func:`ideogram4.sampler.img2img_start`; ``denoise = 0`` returns the latent's samples unchanged); without
    it ``denoise`` must be 1.
    """
    if latent is not None:
        samples = latent["samples"]
        if samples.ndim != 4 or samples.shape[1] != 128:
            raise ValueError(f"Ideogram 4 Sampler: expected a LATENT (B, 128, H/16, W/16), got {tuple(samples.shape)}.")
        batch_size, _, grid_h, grid_w = samples.shape
        width, height = grid_w * PIXELS_PER_TOKEN, grid_h * PIXELS_PER_TOKEN
        raise_problems(NODE_NAME, size_problems(width=width, height=height))
        if denoise <= 0.0:
            return samples  # nothing to denoise: the input latent unchanged, as native samplers do
    else:
        grid_h, grid_w = check_size(width, height, NODE_NAME)
        if denoise != 1.0:
            raise ValueError("Ideogram 4 Sampler: denoise below 1 needs an input latent (img2img); connect one or "
                             "set denoise to 1.")

    features, lengths = text_features(conditioning, batch_size)
    # Refused before the noise, the models or any activation is allocated.
    check_activations_fit(NODE_NAME, cond_patcher.model.velocity_model().config, batch_size, grid_h, grid_w,
                          features.shape[1], compat.inference_dtype(cond_patcher.model).itemsize,
                          cond_patcher.load_device)
    times = logit_normal_schedule(settings.steps, settings.mu, settings.std, width, height)
    guidance = settings.guidance
    device = cond_patcher.load_device
    noise = make_noise(batch_size, grid_h * grid_w, seed, device)
    start = noise
    if latent is not None:
        clean = comfy_latent_to_tokens(latent["samples"].float())
        try:
            times, guidance, start = img2img_start(times, guidance, denoise, clean, noise)
        except ValueError as error:
            reason = str(error).removeprefix("img2img_start: ")
            if not reason.startswith("denoise"):
                reason = f"denoise {denoise}: {reason}"
            raise ValueError(f"Ideogram 4 Sampler: {reason}") from None

    inpaint = None
    if latent is not None and latent.get("noise_mask") is not None:
        inpaint = InpaintRegion(inpaint_mask_tokens(latent["noise_mask"], latent["samples"].shape, device),
                                clean.to(device), noise)

    shape = [batch_size, 128, grid_h, grid_w]
    memory = cond_patcher.model.memory_required(shape)
    comfy.model_management.load_models_gpu([cond_patcher, uncond_patcher], memory_required=memory,
                                           minimum_memory_required=memory)
    cond_model, uncond_model = cond_patcher.model, uncond_patcher.model
    features = features.to(device)
    reporter = StepReporter(len(times) - 1, grid_h, grid_w, cond_model.latent_format, device, times=times,
                            start_tokens=start)
    # As ComfyUI's samplers: the patchers' own options, wrappers and callbacks, and the run's sigmas.
    sample_sigmas = 1.0 - torch.tensor(times, dtype=torch.float32, device=device)
    cond_options = {**sampling_transformer_options(cond_patcher), "sample_sigmas": sample_sigmas}
    uncond_options = {**sampling_transformer_options(uncond_patcher), "sample_sigmas": sample_sigmas}

    def sigma_of(t: float) -> torch.Tensor:
        return torch.full((batch_size,), 1.0 - t, dtype=torch.float32, device=device)

    def cond_velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        reporter.check_interrupted()
        options = step_transformer_options(cond_options, sigma_of(t), 0, t)
        return model_velocity(cond_model, z, t, grid_h, grid_w, options, context=features, text_lengths=lengths)

    def uncond_velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        reporter.check_interrupted()
        options = step_transformer_options(uncond_options, sigma_of(t), 1, t)
        return model_velocity(uncond_model, z, t, grid_h, grid_w, options)

    patchers = (cond_patcher, uncond_patcher)
    prepared = []
    try:
        for patcher in patchers:
            patcher.pre_run()
            prepared.append(patcher)
        tokens = sample(cond_velocity, uncond_velocity, times, guidance, start, callback=reporter, inpaint=inpaint)
    finally:
        for patcher in prepared:
            patcher.cleanup()
    return tokens_to_comfy_latent(tokens, grid_h, grid_w).to(comfy.model_management.intermediate_device())


def inpaint_mask_tokens(noise_mask: torch.Tensor, latent_shape, device) -> torch.Tensor:
    """A LATENT ``noise_mask`` (any resolution, e.g. the image's; 1 = re-sample) resized to the latent grid as
    ComfyUI's samplers resize it (``comfy.sampler_helpers.prepare_mask``: bilinear, repeated over channels and
    batch), as float32 tokens (B, N, 128)."""
    mask = comfy.sampler_helpers.prepare_mask(noise_mask, latent_shape, device)
    return comfy_latent_to_tokens(mask.float())


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefSampler",
            display_name="Ideogram 4 Sampler (reference)",
            category=CATEGORY,
            description="The official Ideogram 4 sampler: logit-normal schedule, Euler steps, asymmetric CFG with a "
                        "per-step guidance list, official noise. Outputs a LATENT for Ideogram 4 VAE Decode.",
            inputs=[
                *model_pair_inputs(),
                preset_input(),
                steps_input(),
                mu_input(),
                std_input(),
                guidance_input(),
                seed_input(),
                width_input(),
                height_input(),
                batch_size_input(),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional start latent for img2img; when connected, its size and batch "
                                        "replace width, height and batch_size. A noise mask on it (Set Latent "
                                        "Noise Mask, VAE Encode (for Inpainting)) re-samples only the masked "
                                        "area; the rest comes back unchanged."),
                denoise_input("Fraction of the schedule to run (img2img; needs a latent). 1 = from pure noise; "
                              "lower keeps only the last steps, polish steps included.", optional=True),
            ],
            outputs=[io.Latent.Output(tooltip="Ideogram 4 LATENT (B, 128, H/16, W/16).")],
        )

    @classmethod
    def validate_inputs(cls, preset=None, steps=None, mu=None, std=None, guidance_schedule=None, width=None,
                        height=None) -> bool | str:
        # Run when the prompt is queued (inputs fed by links arrive as None); ComfyUI then leaves the min/max of
        # these inputs to this check.
        problems = schedule_problems(preset, steps, mu, std, guidance_schedule) + size_problems(width=width,
                                                                                              height=height)
        return validation_result(NODE_NAME, problems)

    @classmethod
    def execute(cls, cond_model, uncond_model, conditioning, preset: str, steps: int, mu: float, std: float,
                guidance_schedule: str, seed: int, width: int, height: int, batch_size: int,
                latent: dict | None = None, denoise: float = 1.0) -> io.NodeOutput:
        settings = resolve_settings(preset, steps, mu, std, guidance_schedule, NODE_NAME)
        note = ignored_guidance_note(preset, guidance_schedule)
        if note is not None:
            logging.warning("%s: %s", NODE_NAME, note)
        samples = sample_latent(cond_model, uncond_model, conditioning, settings, seed, width, height, batch_size,
                                latent, denoise)
        # Always a text, so the node's note (web/js) is replaced on every run, not left stale.
        return io.NodeOutput({"samples": samples}, ui=ui.PreviewText(note or ""))
