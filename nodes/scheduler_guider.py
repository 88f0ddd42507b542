"""Ideogram 4 Scheduler (SIGMAS) and Guider (GUIDER) for ComfyUI's native SamplerCustomAdvanced.

With the pack Noise node and ``KSamplerSelect("euler")`` these reproduce the Ideogram 4 Sampler node (the
official loop) up to float rounding:

* SIGMAS are ``1 - t`` of the official schedule: from ``1 - t_min`` down to ``1 - t_max`` (no forced final 0);
  a denoise below 1 keeps the schedule's tail, the same steps as the sampler's img2img. They are float64 where
  the device supports it: ``1 - sigma`` then gives back the official float32 time exactly, while a float32
  sigma loses up to 3e-8 of it, which a float32 model sees through its 1e4-scaled timestep embedding;
* the model sampling of the pack's MODELs starts a full denoise from the unscaled noise and ends without
  rescaling (see :mod:`.model_wrapper`);
* the guider runs the unconditional model on image tokens only and applies the guidance of the current step,
  found from ``transformer_options["sample_sigmas"]`` and the current sigma. It hands the sampler float32 sigmas
  (so the latent stays float32, as everywhere in ComfyUI) and passes the exact time of each step to the models
  (``transformer_options[EXACT_TIME_KEY]``, see :mod:`.model_wrapper`).
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..ideogram4.constants import PIXELS_PER_TOKEN
from ..ideogram4.sampler import img2img_start
from ..ideogram4.schedule import logit_normal_schedule

from . import compat
from .memory_fit import check_activations_fit
from .model_wrapper import EXACT_TIME_KEY, FULL_DENOISE_SIGMA, sampling_transformer_options, step_transformer_options
from .settings import (
    CATEGORY,
    check_size,
    denoise_input,
    guidance_input,
    height_input,
    ignored_guidance_note,
    model_pair_inputs,
    mu_input,
    preset_input,
    raise_problems,
    resolve_guidance,
    resolve_schedule,
    schedule_problems,
    size_problems,
    std_input,
    steps_input,
    validation_result,
    width_input,
)

UNCOND_MODEL_KEY = "ideogram4_unconditional_model"
SCHEDULER_NAME, GUIDER_NAME = "Ideogram 4 Scheduler", "Ideogram 4 Guider"


def sigma_dtype() -> torch.dtype:
    """float64 on devices with float64 support (CPU, CUDA/ROCm); float32 elsewhere (MPS has no float64)."""
    return torch.float64 if comfy.model_management.get_torch_device().type in ("cpu", "cuda") else torch.float32


def schedule_sigmas(steps: int, mu: float, std: float, width: int, height: int, denoise: float = 1.0) -> torch.Tensor:
    """SIGMAS ``1 - t`` (descending, :func:`sigma_dtype`) of the official schedule, or of its tail for
    ``denoise < 1`` (``denoise = 0`` gives no steps)."""
    check_size(width, height, SCHEDULER_NAME)
    times = logit_normal_schedule(steps, mu, std, width, height)
    if denoise <= 0.0:
        return torch.zeros((0,), dtype=sigma_dtype())
    if denoise < 1.0:
        # The sampler's own rule for which steps a partial denoise keeps (the start tensors are placeholders).
        placeholder = torch.zeros((1, 1, 1), dtype=torch.float32)
        times, _, _ = img2img_start(times, [0.0] * steps, denoise, placeholder, placeholder)
    # 1 - t in float64 is exact for a float32 t; rounding it to float32 is what a float32 sigma would hold.
    return 1.0 - torch.tensor(times, dtype=torch.float64).to(sigma_dtype())


def step_index(sample_sigmas: torch.Tensor, sigma: torch.Tensor) -> int:
    """Index of the sampling step whose interval ``[sigmas[i+1], sigmas[i]]`` holds ``sigma`` (exact match at the
    step start for first-order samplers; intermediate sigmas of higher-order samplers map to their step)."""
    starts = sample_sigmas[:-1].to(sigma.device)
    index = int((starts >= sigma.reshape(-1)[0]).sum()) - 1
    return min(max(index, 0), len(starts) - 1)


class Ideogram4Guider(comfy.samplers.CFGGuider):
    """CFG with a per-step guidance list over two models: ``uncond + g_i * (cond - uncond)`` on the denoised
    predictions, i.e. the official ``g v_cond + (1 - g) v_uncond``.

    The conditional pass runs on a clone of the conditional MODEL (so its patches, hooks and wrappers apply);
    the unconditional MODEL is attached to that clone as an additional model, so ComfyUI loads both in one
    ``load_models_gpu`` call, and is run without text (image tokens only).
    ``guidance`` is in sampling order; shorter SIGMAS of a partial denoise (img2img tail) use its last entries,
    SIGMAS of a full denoise must have as many steps as it has entries. The unconditional pass gets its own
    patcher's ``transformer_options``, wrappers and callbacks, with ``cond_or_uncond = [1]``. A LATENT noise mask
    inpaints as ComfyUI's samplers do, and the unmasked region comes back as the input.
    """

    def __init__(self, cond_patcher, uncond_patcher, guidance: list[float]):
        model = cond_patcher.clone()
        model.set_additional_models(UNCOND_MODEL_KEY, [uncond_patcher])
        super().__init__(model)
        self.uncond_patcher = uncond_patcher
        self.guidance = [float(g) for g in guidance]
        self.exact_times: list[float] | None = None  # model time of each sigma, when the SIGMAS were float64
        self.uncond_options: dict | None = None  # transformer_options of the unconditional model, while sampling

    def set_conds(self, positive, negative=None):
        # The unconditional pass has no conditioning; a negative is not used.
        self.inner_set_conds({"positive": positive})

    def guidance_for(self, timestep: torch.Tensor, model_options: dict) -> float:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise RuntimeError("Ideogram 4 Guider: the sampler did not provide transformer_options['sample_sigmas'].")
        self.check_step_count(sigmas)
        steps = len(sigmas) - 1
        return self.guidance[len(self.guidance) - steps + step_index(sigmas, timestep)]

    def check_step_count(self, sigmas: torch.Tensor) -> None:
        """SIGMAS of a full denoise (starting at sigma >= FULL_DENOISE_SIGMA) must have exactly one step per
        guidance entry; partial-denoise SIGMAS (img2img tail) may be shorter and use the guidance's last entries.
        Raises a ValueError naming both step counts otherwise."""
        steps, entries = len(sigmas) - 1, len(self.guidance)
        full_denoise = steps > 0 and float(sigmas[0]) >= FULL_DENOISE_SIGMA
        if steps > entries or (full_denoise and steps != entries):
            raise ValueError(
                f"Ideogram 4 Guider: the SIGMAS have {steps} steps"
                f"{' (a full denoise)' if full_denoise else ''} but the guidance schedule has {entries} entries "
                f"(one per step); set the same preset and steps in Ideogram 4 Scheduler and Ideogram 4 Guider (the "
                f"Scheduler gives {steps} steps, the Guider expects {entries}).")

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        self.check_step_count(sigmas)  # before any model is loaded
        self.check_image_size(latent_image)
        # float64 SIGMAS (Ideogram 4 Scheduler) carry the exact official times; sampling itself runs on float32
        # sigmas so the latent stays float32 for the sampler, previews and other nodes.
        self.exact_times = [1.0 - float(s) for s in sigmas.tolist()] if sigmas.dtype == torch.float64 else None
        samples = super().sample(noise, latent_image, sampler, sigmas.to(torch.float32), denoise_mask, *args,
                                 **kwargs)
        if denoise_mask is None or len(sigmas) < 2:
            return samples
        # ComfyUI's inpainting keeps the unmasked region on the noised input at every step; the official schedule
        # stops at 1 - t_max, not 0, so that region still holds a trace of noise at the end: give back the input
        # there, as the Ideogram 4 Sampler does.
        mask = comfy.sampler_helpers.prepare_mask(denoise_mask, samples.shape, samples.device).float()
        return samples * mask + latent_image.to(samples) * (1.0 - mask)

    def check_image_size(self, latent_image: torch.Tensor) -> None:
        """Refuse (before any model is loaded) a latent above the size limit or whose activations cannot fit the
        load device."""
        if latent_image is None or latent_image.ndim != 4:
            return
        batch, _, grid_h, grid_w = latent_image.shape
        raise_problems(GUIDER_NAME, size_problems(width=grid_w * PIXELS_PER_TOKEN, height=grid_h * PIXELS_PER_TOKEN))
        positive = self.original_conds.get("positive") or [{}]
        features = positive[0].get("cross_attn")
        text_tokens = features.shape[1] if features is not None else 0
        base_model = self.model_patcher.model
        check_activations_fit(GUIDER_NAME, base_model.velocity_model().config, batch, grid_h, grid_w, text_tokens,
                              compat.inference_dtype(base_model).itemsize, self.model_patcher.load_device)

    def exact_time(self, timestep: torch.Tensor, model_options: dict) -> float | None:
        """The official model time of the current sigma when it is a schedule point of float64 SIGMAS."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if self.exact_times is None or sigmas is None or len(sigmas) != len(self.exact_times):
            return None
        index = step_index(sigmas, timestep)
        return self.exact_times[index] if bool((timestep == sigmas[index]).all()) else None

    def outer_sample(self, *args, **kwargs):
        # The unconditional patcher is prepared and cleaned like the conditional one (CFGGuider.outer_sample does
        # that for its own patcher, and for extra device clones). After a successful run ComfyUI's cleanup of the
        # additional models has already cleaned it; after an exception nothing has, so it is cleaned here.
        self.uncond_options = None
        finished = False
        self.uncond_patcher.pre_run()
        try:
            self.uncond_options = sampling_transformer_options(self.uncond_patcher)
            output = super().outer_sample(*args, **kwargs)
            finished = True
            return output
        finally:
            self.uncond_options = None
            if not finished:
                self.uncond_patcher.cleanup()

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        guidance = self.guidance_for(timestep, model_options)
        sample_sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        exact_time = self.exact_time(timestep, model_options)
        if exact_time is not None:
            model_options = dict(model_options)
            model_options["transformer_options"] = {**model_options["transformer_options"], EXACT_TIME_KEY: exact_time}
        positive = self.conds.get("positive", None)
        cond = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)[0]
        uncond_options = step_transformer_options(self.uncond_options, timestep, 1, exact_time)
        uncond_options["sample_sigmas"] = sample_sigmas
        uncond = self.uncond_patcher.model.apply_model(x, timestep, transformer_options=uncond_options)
        return comfy.samplers.cfg_function(self.inner_model, cond, uncond, guidance, x, timestep,
                                           model_options=model_options, cond=positive, uncond=None)


class Scheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefScheduler",
            display_name="Ideogram 4 Scheduler (reference)",
            category=CATEGORY,
            description="The official Ideogram 4 schedule as SIGMAS (1 - t, from 1 - t_min to 1 - t_max, no forced "
                        "final 0), for SamplerCustomAdvanced with the Ideogram 4 Guider and Noise.",
            inputs=[preset_input(), steps_input(), mu_input(), std_input(), width_input(), height_input(),
                    denoise_input("Fraction of the schedule to keep (img2img): the last round(steps * denoise) "
                                  "steps. 1 = full schedule.")],
            outputs=[io.Sigmas.Output(tooltip="Descending sigmas = 1 - official times.")],
        )

    @classmethod
    def validate_inputs(cls, preset=None, steps=None, mu=None, std=None, width=None, height=None) -> bool | str:
        problems = schedule_problems(preset, steps, mu, std) + size_problems(width=width, height=height)
        return validation_result(SCHEDULER_NAME, problems)

    @classmethod
    def execute(cls, preset: str, steps: int, mu: float, std: float, width: int, height: int,
                denoise: float = 1.0) -> io.NodeOutput:
        raise_problems(SCHEDULER_NAME, schedule_problems(preset, steps, mu, std))
        steps, mu, std = resolve_schedule(preset, steps, mu, std)
        return io.NodeOutput(schedule_sigmas(steps, mu, std, width, height, denoise))


class Guider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefGuider",
            display_name="Ideogram 4 Guider (reference)",
            category=CATEGORY,
            description="Asymmetric CFG with the per-step guidance list: conditional model on text + image, "
                        "unconditional model on image tokens only. For SamplerCustomAdvanced.",
            inputs=[
                *model_pair_inputs(),
                preset_input(),
                steps_input(),
                guidance_input(),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(cls, preset=None, steps=None, guidance_schedule=None) -> bool | str:
        problems = schedule_problems(preset, steps, guidance_schedule=guidance_schedule)
        return validation_result(GUIDER_NAME, problems)

    @classmethod
    def execute(cls, cond_model, uncond_model, conditioning, preset: str, steps: int,
                guidance_schedule: str) -> io.NodeOutput:
        if not conditioning or conditioning[0][0] is None:
            raise ValueError("Ideogram 4 Guider: the conditioning holds no text features; connect the output of "
                             "Ideogram 4 Text Encode.")
        raise_problems(GUIDER_NAME, schedule_problems(preset, steps))
        note = ignored_guidance_note(preset, guidance_schedule)
        if note is not None:
            logging.warning("%s: %s", GUIDER_NAME, note)
        guider = Ideogram4Guider(cond_model, uncond_model, resolve_guidance(preset, steps, guidance_schedule))
        guider.set_conds(conditioning)
        return io.NodeOutput(guider, ui=ui.PreviewText(note or ""))
