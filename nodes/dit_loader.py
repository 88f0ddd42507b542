"""Ideogram 4 DiT Loader: the conditional and the unconditional transformer as two ComfyUI MODELs.

Weight dtype choices (compute dtype: ComfyUI's ``--bf16-unet`` / ``--fp32-unet`` when given, else bf16 where the
load device supports it, the official dtype, else fp32; see :mod:`.precision`):

* ``default``: quantised files stay quantised in memory — fp8, GGUF blocks, nf4 — and each layer is de-quantised
  on the compute device when it runs (bit-identical to de-quantising at load); other files are held in the
  compute dtype.
* ``bf16``: every weight de-quantised / cast to bf16 once at load (the official pipeline's memory layout);
  computes in bf16.
* ``fp8``: every block Linear held in fp8 with a per-row scale; unquantised files are quantised per row (lossy).
* ``fp8_fast`` (opt-in, approximate): as ``fp8``, and the blocks' token Linears multiply in fp8 (activations quantised
  per token, :func:`ideogram4.quantization.fp8_matmul_linear`) on GPUs that have fp8 matrix multiplies; elsewhere as
  ``fp8``.
"""

from __future__ import annotations

import logging
import os

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..ideogram4.compile import compile_transformer_blocks
from ..ideogram4.dit_checkpoint import DiTCheckpoint, DiTCheckpointInfo, check_dit_pair, load_dit_checkpoint
from ..ideogram4.quantization import QuantizedWeight, quantize_fp8_rowwise, supports_fp8_matmul

from . import compat
from .quantized_ops import (
    Ideogram4QuantizedOps,
    QuantizedWeightPatching,
    comfy_operations_for,
    make_quantized_layer,
)
from .model_folders import model_file_list, model_file_path
from .model_wrapper import Ideogram4Model, Ideogram4ModelConfig
from .precision import dit_compute_dtype
from .progress import check_interrupted_between_blocks
from .settings import CATEGORY, validation_result

NODE_NAME = "Ideogram 4 DiT Loader"
WEIGHT_DTYPES = ["default", "bf16", "fp8", "fp8_fast"]
MODEL_FOLDER = "diffusion_models"


def build_dit_patcher(checkpoint: DiTCheckpoint, compute_dtype: torch.dtype, quantize_to_fp8: bool = False,
                      load_device=None, offload_device=None):
    """A ComfyUI patcher around an :class:`Ideogram4Model` holding ``checkpoint``'s weights.

    Weights stay as the checkpoint holds them: the Linears in ``checkpoint.quantized`` (loaded with
    ``keep_quantized=True``: fp8 + per-row ``weight_scale``, GGUF blocks, nf4) become quantised layers
    (:mod:`nodes.quantized_ops`); ``quantize_to_fp8`` also stores every other ``layers.*`` Linear weight in fp8.
    Consumes ``checkpoint.state_dict`` (left empty): each tensor is released as soon as the model holds it.
    """
    load_device = comfy.model_management.get_torch_device() if load_device is None else load_device
    offload_device = comfy.model_management.unet_offload_device() if offload_device is None else offload_device
    state = checkpoint.state_dict
    quantized = dict(checkpoint.quantized)
    for key in [key for key in state if key.endswith(".input_scale")]:
        del state[key]  # activation scale of ComfyUI's fp8 matmuls; the weight-only official path does not use it
    if quantize_to_fp8:
        # Keys only, not (key, tensor) pairs: each original tensor is released as soon as its fp8 copy replaces it.
        for key in [key for key in state if key.startswith("layers.") and key.endswith(".weight")]:
            layer = key[: -len(".weight")]
            if state[key].ndim == 2 and layer not in quantized:
                quantized[layer] = QuantizedWeight("fp8_rowwise", tuple(state[key].shape))
                state[key], state[layer + ".weight_scale"] = quantize_fp8_rowwise(state[key])

    config = Ideogram4ModelConfig({"image_model": "ideogram4_reference", "dit_config": checkpoint.config})
    comfy_formats = sorted({spec.comfy_format for spec in quantized.values() if spec.kind == "comfy"})
    if comfy_formats:
        # Comfy-Org int8 / nvfp4 files: every ComfyUI-quantised layer goes to ComfyUI's own quantised layers.
        config.custom_operations = comfy_operations_for(
            "Ideogram 4 DiT Loader", checkpoint.path, comfy_formats, compute_dtype, load_device,
            "ideogram4_fp8_scaled.safetensors (Comfy-Org), a GGUF (ideogram4-Q8_0.gguf, -Q4_0 ...) or the official "
            "ideogram-4-fp8 / ideogram-4-nf4 weights")
        config.set_inference_dtype(compute_dtype, compute_dtype)
    elif quantized:
        config.custom_operations = Ideogram4QuantizedOps
        config.set_inference_dtype(compute_dtype, compute_dtype)
    else:
        stored = state["input_proj.weight"].dtype
        config.set_inference_dtype(stored, None if stored == compute_dtype else compute_dtype)
    model = Ideogram4Model(config)
    model.diffusion_model.block_callback = check_interrupted_between_blocks
    for layer, spec in ((layer, spec) for layer, spec in quantized.items() if spec.kind != "comfy"):
        make_quantized_layer(model.diffusion_model.get_submodule(layer), spec, state[layer + ".weight"],
                             {name: state[f"{layer}.{name}"] for name in spec.sidecars})
    compat.archive_dtypes(model.diffusion_model)

    # Weight patches (LoRA) on quantised layers apply to the de-quantised weight when the layer runs.
    patcher = compat.new_patcher(model, load_device=load_device, offload_device=offload_device,
                                 mixin=QuantizedWeightPatching)
    try:
        compat.load_weights(patcher, model.diffusion_model, state)
    except ValueError as error:
        raise ValueError(f"Ideogram 4 DiT {checkpoint.path}: {error}") from None
    return patcher


def load_dit_patchers(cond_path: str, uncond_path: str, weight_dtype: str, pair_checked: bool = False):
    """(cond patcher, uncond patcher) for two checkpoint files; ``weight_dtype`` is one of :data:`WEIGHT_DTYPES`.

    The pair is checked from the headers first (:func:`ideogram4.dit_checkpoint.check_dit_pair`; skipped when the
    caller has, ``pair_checked``), so a mismatched pair is refused before either model loads. The files are then
    read one after the other and each state dict is consumed layer by layer as its model fills
    (:func:`compat.load_weights`), so loading peaks near the two models' own size even where the weights are
    converted in memory (de-quantised, cast or quantised), instead of adding a converted copy of a model.
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"Ideogram 4 DiT Loader: weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}.")
    load_device = comfy.model_management.get_torch_device()
    compute_dtype = torch.bfloat16 if weight_dtype == "bf16" else dit_compute_dtype(load_device)
    keep_quantized, quantize = weight_dtype != "bf16", weight_dtype in ("fp8", "fp8_fast")

    if not pair_checked:
        check_dit_pair(cond_path, uncond_path)
    cond_checkpoint = load_dit_checkpoint(cond_path, dtype=compute_dtype, keep_quantized=keep_quantized)
    cond = build_dit_patcher(cond_checkpoint, compute_dtype, quantize, load_device)
    del cond_checkpoint
    uncond_checkpoint = load_dit_checkpoint(uncond_path, dtype=compute_dtype, keep_quantized=keep_quantized)
    uncond = build_dit_patcher(uncond_checkpoint, compute_dtype, quantize, load_device)
    if weight_dtype == "fp8_fast":
        enable_fp8_matmul((cond, uncond), load_device, compute_dtype)
    return cond, uncond


def says_unconditional(info: DiTCheckpointInfo) -> bool:
    """Whether the file's name, its folder (the official ``unconditional_transformer/``) or its safetensors
    metadata call it the unconditional transformer."""
    where = [os.path.basename(info.path), os.path.basename(os.path.dirname(info.path)), *info.metadata.values()]
    return any("uncond" in text.lower() for text in where)


def pairing_warnings(cond_info: DiTCheckpointInfo, uncond_info: DiTCheckpointInfo) -> list[str]:
    """Warnings for a pair whose names or metadata suggest the files sit in the wrong slots."""
    warnings = []
    if says_unconditional(cond_info):
        warnings.append(f"cond_model_name {os.path.basename(cond_info.path)} looks like the unconditional "
                        "transformer (its name or metadata says so); the conditional one (e.g. "
                        "ideogram4_fp8_scaled) belongs here. Swap the two files if they are reversed.")
    if not says_unconditional(uncond_info):
        warnings.append(f"uncond_model_name {os.path.basename(uncond_info.path)} does not look like the "
                        "unconditional transformer (neither its name nor its metadata says 'unconditional'); pick "
                        "e.g. ideogram4_unconditional_fp8_scaled there.")
    return warnings


def enable_fp8_matmul(patchers, load_device, compute_dtype: torch.dtype) -> None:
    """Switch the fp8 token Linears of the blocks (attention qkv/o, feed-forward w1/w2/w3) of ``patchers`` to fp8
    matrix multiplies where ``load_device`` runs them with ``compute_dtype`` output; elsewhere log why and leave them
    de-quantising (as ``fp8``). The blocks' ``adaln_modulation`` stays de-quantised: it runs once per sample (no
    time to gain) and its output scales and gates every activation, so quantising its input would move the whole
    velocity (13 % after one full-width random block on the CPU, against 1-2 % for each token Linear)."""
    if not supports_fp8_matmul(load_device, compute_dtype):
        logging.warning("Ideogram 4 DiT Loader: weight_dtype fp8_fast needs row-wise scaled fp8 matrix multiplies "
                        "(an NVIDIA GPU of compute capability 8.9 or newer and a PyTorch build that has them, with "
                        "%s output); %s has none, so the weights are used as with fp8.", compute_dtype, load_device)
        return
    for patcher in patchers:
        for name, module in patcher.model.diffusion_model.named_modules():
            token_linear = name.startswith("layers.") and (".attention." in name or ".feed_forward." in name)
            quantized = getattr(module, "quantized", None)
            if token_linear and quantized is not None and quantized.kind == "fp8_rowwise":
                module.fp8_compute = True


class DiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = model_file_list(MODEL_FOLDER)
        return io.Schema(
            node_id="Ideogram4RefDiTLoader",
            display_name="Ideogram 4 DiT Loader (reference)",
            category=CATEGORY,
            description="Loads the conditional and unconditional Ideogram 4 transformers (official fp8 or nf4, "
                        "Comfy-Org fp8_scaled, GGUF, or the diffusers layout) as two MODELs.",
            inputs=[
                io.Combo.Input("cond_model_name", options=files,
                               tooltip="The conditional transformer in models/diffusion_models (or unet), e.g. "
                                       "ideogram4_fp8_scaled.safetensors or ideogram4-Q4_0.gguf."),
                io.Combo.Input("uncond_model_name", options=files,
                               tooltip="The unconditional transformer in models/diffusion_models (or unet), e.g. "
                                       "ideogram4_unconditional_fp8_scaled.safetensors or ideogram4_uncond-Q4_0.gguf."),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default",
                               tooltip="default: keep quantised files (fp8, GGUF, nf4) quantised, each layer "
                                       "de-quantised when it runs (fp8: same result as bf16); others in the compute "
                                       "dtype. bf16: de-quantise everything once "
                                       "(more memory). fp8: store all block weights in fp8 (quantises bf16 files; "
                                       "lossy). fp8_fast: as fp8, and multiply in fp8 on GPUs that can (RTX 40xx, "
                                       "H100 and newer); faster, approximate (not the official bf16 maths). LoRAs "
                                       "apply to the de-quantised weights."),
                io.Boolean.Input("compile_blocks", default=False,
                                 tooltip="Compile the transformer blocks with torch.compile (opt-in). The first "
                                         "sampling run at each size compiles (slow), later steps run faster; "
                                         "results are unchanged (bf16 rounding kept). Needs a working "
                                         "torch.compile (Triton on NVIDIA)."),
            ],
            outputs=[
                io.Model.Output("cond_model", display_name="cond_model",
                                tooltip="The conditional transformer (text + image)."),
                io.Model.Output("uncond_model", display_name="uncond_model",
                                tooltip="The unconditional transformer (image tokens only)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, cond_model_name=None, uncond_model_name=None) -> bool | str:
        # Run when the prompt is queued; ComfyUI then leaves the "value in list" check of these inputs to this.
        problems = []
        files = model_file_list(MODEL_FOLDER)
        for name, value in (("cond_model_name", cond_model_name), ("uncond_model_name", uncond_model_name)):
            if value is not None and value not in files:
                problems.append(f"{name} {value!r} is not in models/{MODEL_FOLDER}; put the file there (then press "
                                "r to refresh) or pick one of the listed files")
        if cond_model_name is not None and cond_model_name == uncond_model_name:
            problems.append(f"cond_model_name and uncond_model_name are the same file ({cond_model_name}); pick the "
                            "unconditional transformer (e.g. ideogram4_unconditional_fp8_scaled) as uncond_model_name")
        return validation_result(NODE_NAME, problems)

    @classmethod
    def execute(cls, cond_model_name: str, uncond_model_name: str, weight_dtype: str = "default",
                compile_blocks: bool = False) -> io.NodeOutput:
        cond_path = model_file_path(MODEL_FOLDER, cond_model_name)
        uncond_path = model_file_path(MODEL_FOLDER, uncond_model_name)
        warnings = pairing_warnings(*check_dit_pair(cond_path, uncond_path))
        for warning in warnings:
            logging.warning("%s: %s", NODE_NAME, warning)
        cond, uncond = load_dit_patchers(cond_path, uncond_path, weight_dtype, pair_checked=True)
        if compile_blocks:
            # Lazy: nothing compiles here; each block compiles at its first forward of a new input shape.
            for patcher in (cond, uncond):
                compile_transformer_blocks(patcher.model.diffusion_model)
        # Always a text, so the node's note (web/js) is replaced on every run, not left stale.
        return io.NodeOutput(cond, uncond, ui=ui.PreviewText("\n".join(warnings)))
