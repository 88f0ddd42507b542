"""The Ideogram 4 DiT as a ComfyUI MODEL: a ``BaseModel`` (FLOW, shift 1) around the core ``Ideogram4DiT``.

ComfyUI's samplers see the usual flow-matching model: latent ``x`` ``(B, 128, gh, gw)`` in ComfyUI's FLUX.2
channel order, sigma in [0, 1] (1 = noise), and an output ``-v`` so that ``denoised = x - sigma * out`` (CONST).
Inside, the latent is permuted to tokens, the model time is ``t = 1 - sigma`` and the core velocity functions
run the conditional pass (``c_crossattn`` text features ``(B, n, 53248)``) or, without text, the image-only pass.

Model sampling (:class:`Ideogram4ModelSampling`) differs from ComfyUI's plain FLOW in the two places where the
official sampler does: so that the pack Scheduler's SIGMAS (``1 - t``, ending at ``1 - t_max``, no forced 0) plus
native ``SamplerCustomAdvanced`` + euler reproduce the official loop,

* ``noise_scaling`` returns the noise itself at a full denoise: the official loop starts from unscaled unit
  noise at ``t_min`` (ComfyUI would start from ``sigma_0 * noise = 0.99988 * noise``); a partial denoise mixes
  ``sigma * noise + (1 - sigma) * latent`` like the official img2img start;
* ``inverse_noise_scaling`` is the identity: the official loop stops at ``t_max`` and keeps that latent (ComfyUI
  would divide it by ``1 - sigma_last``).

The model time is ``1 - sigma``, except when the Ideogram 4 Guider passes the exact official time of the step in
``transformer_options[EXACT_TIME_KEY]`` (a float32 sigma near 1 cannot hold a small time exactly); the pack
Sampler does the same for every call.
"""

from __future__ import annotations

import comfy.conds
import comfy.model_base
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ..ideogram4.dit import Ideogram4DiT
from ..ideogram4.dit_config import DiTConfig
from ..ideogram4.latent import comfy_latent_to_tokens, tokens_to_comfy_latent
from ..ideogram4.packing import left_align_text_features
from ..ideogram4.schedule import T_MIN
from ..ideogram4.velocity import conditional_velocity, unconditional_velocity

from . import compat

# Any start sigma at least this large is a full denoise (the pack Scheduler starts at 1 - t_min = 0.99988;
# partial schedules start at 1 - t_1 <= ~0.98).
FULL_DENOISE_SIGMA = 1.0 - 1.5 * T_MIN

# transformer_options key under which the Ideogram 4 Guider passes the exact model time of the current step (the
# float32 sigma alone loses up to 3e-8 of it; see scheduler_guider).
EXACT_TIME_KEY = "ideogram4_model_time"

# ComfyUI's estimate of activation memory per latent pixel, as native Ideogram 4 uses (without dynamic VRAM).
MEMORY_USAGE_FACTOR = 11.6


class Ideogram4ModelSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    """FLOW sampling (shift 1, multiplier 1: timestep = sigma) with the official start and end (module docstring)."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        if float(torch.as_tensor(sigma).max()) >= FULL_DENOISE_SIGMA:
            return noise
        return super().noise_scaling(sigma, noise, latent_image, max_denoise)

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class Ideogram4ModelConfig(comfy.supported_models_base.BASE):
    """Describes the pack's DiT to ``BaseModel``. Never registered in ``comfy.supported_models``, so it cannot
    capture the detection of native checkpoints."""

    unet_config = {"image_model": "ideogram4_reference"}
    unet_extra_config = {}
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}
    latent_format = compat.latent_format_class()
    memory_usage_factor = MEMORY_USAGE_FACTOR
    supported_inference_dtypes = [torch.bfloat16, torch.float32]


class Ideogram4DiffusionModel(Ideogram4DiT):
    """The core DiT, also callable with ComfyUI's diffusion-model convention.

    ``forward(x (B, L, 128) tokens, t, ...)`` is the core forward (the velocity functions call it);
    ``forward(x (B, 128, gh, gw) latent, sigma (B,), context=..., transformer_options=...)`` is ComfyUI's call from
    ``BaseModel.apply_model`` (and the pack Sampler's, :func:`model_velocity`): it runs through the
    ``DIFFUSION_MODEL`` wrappers of ``transformer_options`` as native models do and returns ``-v`` in the latent
    layout. Within it each transformer block honours ``transformer_options["patches_replace"]["dit"]
    [("single_block", i)]`` and sets ``block_index`` / ``total_blocks`` / ``block_type`` like native DiTs.
    """

    def __init__(self, dit_config: DiTConfig, dtype=None, device=None, operations=None, **unused_unet_config):
        super().__init__(dit_config, dtype=dtype, device=device, operations=operations)
        self.dtype = dtype  # read by BaseModel.get_dtype()

    def forward(self, x, timesteps, *args, **kwargs):
        if x.ndim == 4:
            return self.forward_latent(x, timesteps, *args, **kwargs)
        return super().forward(x, timesteps, *args, **kwargs)

    def forward_latent(self, x, timesteps, context=None, attention_mask=None, transformer_options=None, **kwargs):
        """ComfyUI's diffusion-model call through the ``DIFFUSION_MODEL`` wrappers (arguments passed positionally
        in native order, as wrappers of other nodes read them)."""
        if transformer_options is None:
            transformer_options = {}  # a fresh dict: the blocks write block_index into it
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward_latent, self, wrappers).execute(
            x, timesteps, context, attention_mask, transformer_options, **kwargs)

    def _forward_latent(self, x, timesteps, context, attention_mask, transformer_options, text_lengths=None,
                        **unused):
        """x (B, 128, gh, gw) in the compute dtype, timesteps = sigma (B,), context (B, n, F) or None (image-only
        pass); ``attention_mask`` (B, n) of right-padded text, or ``text_lengths`` of text already left-aligned.
        Returns ``-v`` (B, 128, gh, gw) float32."""
        _, _, grid_h, grid_w = x.shape
        sigma = timesteps.reshape(-1)
        if not bool((sigma == sigma[0]).all()):
            raise ValueError("Ideogram 4: every sample of a batch must be at the same sigma in one model call")
        t = 1.0 - float(sigma[0])
        exact = transformer_options.get(EXACT_TIME_KEY)
        if exact is not None and abs((1.0 - exact) - float(sigma[0])) < 1e-6:
            t = exact  # the official float32 time this sigma was made from
        tokens = comfy_latent_to_tokens(x.float())
        if context is None:
            velocity = unconditional_velocity(self, tokens, t, grid_h, grid_w, dtype=x.dtype,
                                              transformer_options=transformer_options)
        else:
            lengths = text_lengths
            if attention_mask is not None:
                context, lengths = left_align_text_features(context, attention_mask)
            velocity = conditional_velocity(self, tokens, t, context, lengths, grid_h, grid_w, dtype=x.dtype,
                                            transformer_options=transformer_options)
        return -tokens_to_comfy_latent(velocity, grid_h, grid_w)

    def run_block(self, index, h, adaln_input, cos, sin, attention_mask, transformer_options):
        if transformer_options is None:  # a direct core call (no ComfyUI options)
            return super().run_block(index, h, adaln_input, cos, sin, attention_mask, transformer_options)
        transformer_options["block_index"] = index
        transformer_options["total_blocks"] = len(self.layers)
        transformer_options["block_type"] = "single"
        replace = transformer_options.get("patches_replace", {}).get("dit", {}).get(("single_block", index))
        if replace is None:
            return super().run_block(index, h, adaln_input, cos, sin, attention_mask, transformer_options)

        def original_block(args):
            out = super(Ideogram4DiffusionModel, self).run_block(
                index, args["img"], args["vec"], *args["pe"], args["attn_mask"], args["transformer_options"])
            return {"img": out}

        args = {"img": h, "vec": adaln_input, "pe": (cos, sin), "attn_mask": attention_mask,
                "transformer_options": transformer_options}
        return replace(args, {"original_block": original_block})["img"]


def sampling_transformer_options(patcher) -> dict:
    """The ``transformer_options`` a sampling run of ``patcher``'s model starts from, assembled as ComfyUI's
    samplers do (``sampler_helpers.prepare_model_patcher``): a copy of the patcher's own options (patches,
    ``patches_replace``) with its wrappers and callbacks merged in."""
    options = comfy.model_patcher.create_model_options_clone(patcher.model_options).get("transformer_options", {})
    for name, registered in (("wrappers", patcher.wrappers), ("callbacks", patcher.callbacks)):
        comfy.patcher_extension.merge_nested_dicts(options.setdefault(name, {}), registered, copy_dict1=False)
    return options


def step_transformer_options(run_options: dict, sigma: torch.Tensor, cond_or_uncond: int,
                             exact_time: float | None) -> dict:
    """Per-call options of one model evaluation, with the keys ComfyUI's ``calc_cond_batch`` sets (``sigmas``,
    ``cond_or_uncond``; 0 = conditional, 1 = unconditional) plus the exact model time of the step."""
    return {**run_options, "sigmas": sigma, "cond_or_uncond": [cond_or_uncond], EXACT_TIME_KEY: exact_time}


def model_velocity(model, z: torch.Tensor, t: float, grid_h: int, grid_w: int, transformer_options: dict,
                   context: torch.Tensor | None = None, text_lengths: list[int] | None = None) -> torch.Tensor:
    """Velocity (B, N, C) float32 of ``model`` (an :class:`Ideogram4Model`) at tokens ``z`` and model time ``t``,
    through ComfyUI's diffusion-model call (so its wrappers and block patches apply). The latent permutations and
    negation are exact: the result equals :func:`ideogram4.velocity.conditional_velocity` (``context`` given, left
    aligned with ``text_lengths``) or ``unconditional_velocity`` on the same DiT, bit for bit."""
    dtype = compat.inference_dtype(model)
    x = tokens_to_comfy_latent(z, grid_h, grid_w).to(dtype)
    sigma = transformer_options["sigmas"]
    out = model.diffusion_model(x, sigma, context=context, transformer_options=transformer_options,
                                text_lengths=text_lengths)
    return -comfy_latent_to_tokens(out)


class Ideogram4Model(comfy.model_base.BaseModel):
    """ComfyUI ``BaseModel`` of one Ideogram 4 transformer (the conditional or the unconditional one)."""

    def __init__(self, model_config: Ideogram4ModelConfig, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device,
                         unet_model=Ideogram4DiffusionModel)
        self.model_sampling = Ideogram4ModelSampling(model_config)

    def extra_conds(self, **kwargs):
        """CONDITIONING -> model inputs: the text features as ``c_crossattn`` (no text: image-only pass) and, when
        some text rows are padding, the text ``attention_mask`` (ComfyUI pads on the right; the model re-aligns it to
        the official left padding)."""
        out = {}
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
            mask = kwargs.get("attention_mask", None)
            if mask is not None and not bool(mask.bool().all()):
                out["attention_mask"] = comfy.conds.CONDRegular(mask)
        return out

    def velocity_model(self) -> Ideogram4DiffusionModel:
        """The core DiT (its config and blocks), for callers that inspect it."""
        return self.diffusion_model
