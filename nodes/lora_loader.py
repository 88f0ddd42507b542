"""Ideogram 4 LoRA Loader: a LoRA file as weight patches on the conditional and/or the unconditional MODEL.

The core (:mod:`ideogram4.lora`) recognises the file's layout and builds the key map; ComfyUI's own machinery
(``comfy.lora.load_lora`` and its weight adapters) turns it into patches, added to clones of the patchers with
``add_patches``. ComfyUI then applies them when it loads a model (merged into bf16 weights, or per layer at run time
under partial loading / fp8 storage) and removes them afterwards, as for any native LoRA; the input MODELs stay
un-patched.
"""

from __future__ import annotations

import logging

import comfy.lora
import comfy.model_management
import folder_paths
import torch
from comfy.weight_adapter.lora import LoRAAdapter
from comfy_api.latest import io, ui

from ..ideogram4.dit_checkpoint import expected_dit_shapes
from ..ideogram4.lora import LoraKeyMap, map_lora_keys, read_lora_file

from .settings import CATEGORY

LORA_FOLDER = "loras"
# The key prefix of the transformer's weights inside a ComfyUI BaseModel.
MODEL_PREFIX = "diffusion_model."
ALL_MAPPED_TEXT = "every key of the LoRA was applied"


class OutputAxisDoRA(LoRAAdapter):
    """DoRA with one magnitude per output row (PEFT ``lora_magnitude_vector``, LyCORIS/OneTrainer output-axis
    ``dora_scale``): ``W' = m * (W + s*B@A) / ||W + s*B@A||_row``, blended with ``W`` by the strength.

    ComfyUI's own ``weight_decompose`` divides output-axis magnitudes by the norms of ``W`` without the LoRA (and
    broadcasts a 1-D magnitude across rows), which is not the DoRA the files were trained with."""

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        up, down, alpha, _, dora_scale, _ = self.weights
        up = comfy.model_management.cast_to_device(up, weight.device, intermediate_dtype)
        down = comfy.model_management.cast_to_device(down, weight.device, intermediate_dtype)
        magnitude = comfy.model_management.cast_to_device(dora_scale, weight.device, intermediate_dtype)
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        adapted = weight.to(intermediate_dtype) + function(scale * (up @ down)).to(intermediate_dtype)
        norms = adapted.norm(dim=1, keepdim=True) + torch.finfo(intermediate_dtype).eps
        decomposed = adapted * (magnitude.reshape(-1, 1) / norms)
        weight += (strength * (decomposed - weight.to(intermediate_dtype))).to(weight.dtype)
        return weight


def _use_output_axis_dora(patches: dict, weight_shapes: dict) -> None:
    """Swap ComfyUI's LoRA adapter for :class:`OutputAxisDoRA` where a DoRA magnitude has one value per row."""
    for target, patch in patches.items():
        if not isinstance(patch, LoRAAdapter) or patch.weights[4] is None:
            continue
        rows = target[1][2] if isinstance(target, tuple) else weight_shapes[target][0]
        if patch.weights[4].numel() == rows and patch.weights[4].shape[0] == rows:
            patches[target] = OutputAxisDoRA(patch.loaded_keys, patch.weights)


def load_lora_patches(path: str, patcher) -> tuple[dict, LoraKeyMap]:
    """(patches for ``patcher.add_patches``, the file's key map) of the LoRA at ``path`` on ``patcher``'s DiT."""
    # Logical shapes from the architecture: a quantised layer's stored tensor has another shape (packed nf4 bytes).
    weight_shapes = expected_dit_shapes(patcher.model.diffusion_model.config)
    tensors, adapter_config = read_lora_file(path)
    mapped = map_lora_keys(tensors, weight_shapes, adapter_config)

    def prefixed(target):
        return MODEL_PREFIX + target if isinstance(target, str) else (MODEL_PREFIX + target[0], target[1])

    key_map = {stem: prefixed(target) for stem, target in mapped.key_map.items()}
    patches = comfy.lora.load_lora(mapped.tensors, key_map, log_missing=False)
    _use_output_axis_dora(patches, {MODEL_PREFIX + key: shape for key, shape in weight_shapes.items()})
    return patches, mapped


def patched(patcher, patches: dict, strength: float):
    """A clone of ``patcher`` with ``patches`` at ``strength``; ``patcher`` itself when the strength is 0."""
    if strength == 0:
        return patcher
    clone = patcher.clone()
    clone.add_patches(patches, strength)
    return clone


class LoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4RefLoraLoader",
            display_name="Ideogram 4 LoRA Loader (reference)",
            category=CATEGORY,
            description="Applies a LoRA (diffusers/PEFT, kohya, ai-toolkit, SimpleTuner LyCORIS LoKr/LoHa, DoRA or "
                        "full-weight diff files) to the conditional and/or unconditional Ideogram 4 transformer. "
                        "Chain several loaders to stack LoRAs.",
            inputs=[
                io.Model.Input("cond_model", tooltip="The conditional transformer (from the DiT Loader or another "
                                                     "LoRA loader)."),
                io.Model.Input("uncond_model", tooltip="The unconditional transformer (from the DiT Loader or "
                                                       "another LoRA loader)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(LORA_FOLDER),
                               tooltip="The LoRA file in models/loras. An adapter_config.json beside it (PEFT) "
                                       "gives its alpha."),
                io.Float.Input("strength_cond", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA changes the conditional transformer (1 = as trained, "
                                       "0 = not applied)."),
                io.Float.Input("strength_uncond", default=0.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA changes the unconditional transformer. LoRAs are "
                                       "trained on the conditional transformer, so leave this at 0; raise it only "
                                       "for a LoRA trained on the unconditional branch too (its notes say so), or "
                                       "to test whether applying the style to both branches helps."),
            ],
            outputs=[
                io.Model.Output("cond_model_out", display_name="cond_model",
                                tooltip="The conditional transformer with the LoRA."),
                io.Model.Output("uncond_model_out", display_name="uncond_model",
                                tooltip="The unconditional transformer (with the LoRA when strength_uncond is not 0)."),
            ],
        )

    @classmethod
    def execute(cls, cond_model, uncond_model, lora_name: str, strength_cond: float = 1.0,
                strength_uncond: float = 0.0) -> io.NodeOutput:
        if strength_cond == 0 and strength_uncond == 0:
            return io.NodeOutput(cond_model, uncond_model, ui=ui.PreviewText("strengths are 0: LoRA not applied"))
        path = folder_paths.get_full_path_or_raise(LORA_FOLDER, lora_name)
        try:
            patches, mapped = load_lora_patches(path, cond_model)
        except ValueError as error:  # LoraFormatError / CheckpointError name the file's problem
            raise ValueError(f"Ideogram 4 LoRA Loader: lora_name {lora_name}: {error}") from None
        report = ALL_MAPPED_TEXT
        if mapped.unmapped:
            report = f"not applied (no matching Ideogram 4 weight): {mapped.describe_unmapped()}"
            logging.warning("Ideogram 4 LoRA Loader: %s: %s", lora_name, report)
        logging.info("Ideogram 4 LoRA Loader: %s: %d patched weights (%s)", lora_name, len(patches),
                     ", ".join(mapped.families))
        return io.NodeOutput(patched(cond_model, patches, strength_cond),
                             patched(uncond_model, patches, strength_uncond), ui=ui.PreviewText(report))
