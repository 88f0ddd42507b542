"""Keeping Linear weights in fp8 inside ComfyUI (DiT and text encoder) and de-quantising them per layer at cast time.

A Linear whose weight is stored as float8 carries a per-row ``weight_scale`` float32 ``(out,)``. Every call casts
the weight to the compute dtype ``dt`` through ComfyUI's ``cast_bias_weight`` (which also streams it from the
offload device when the layer did not fit in VRAM) and rebuilds it as ``weight.to(dt) * weight_scale.to(dt)[:,
None]`` — the official ``Fp8Linear`` rule (:func:`ideogram4.quantization.dequantize_fp8_rowwise`), so the
result is bit-identical to de-quantising the whole model once at load time.

Weight patches (LoRA) are not supported on fp8-stored layers: ComfyUI would add them to the cast weight before
the scale (low-VRAM / dynamic path) or into the fp8 weight itself (full load), i.e. in the unscaled domain, which
silently gives wrong weights. Both paths are refused with :data:`LORA_ON_FP8_MESSAGE` (``weight_dtype = bf16``
works with LoRAs).
"""

from __future__ import annotations

import comfy.model_management
import comfy.ops
import torch
import torch.nn.functional as F

from ..ideogram4.quantization import fp8_matmul_linear

from . import compat
from .compat import PyTorchStateDictLoading

FP8_STORAGE_DTYPE = torch.float8_e4m3fn
LORA_ON_FP8_MESSAGE = ("Ideogram 4: LoRA on fp8-stored weights is not supported; set the DiT Loader's weight_dtype "
                       "to bf16")
HAS_UNCAST = compat.has_offloadable_cast()


class Ideogram4Fp8Ops(comfy.ops.manual_cast):
    """``comfy.ops.manual_cast`` whose Linear may hold an fp8 weight plus a per-row ``weight_scale``.

    Linear and Embedding always hold their weights from construction (:class:`compat.PyTorchStateDictLoading`), so
    the core loaders can list and assign every key under dynamic VRAM too, and ``weight_scale`` loads with the weight.
    """

    class Embedding(PyTorchStateDictLoading, comfy.ops.manual_cast.Embedding):
        pass

    class Linear(PyTorchStateDictLoading, comfy.ops.manual_cast.Linear):
        # fp8 layers get a ``weight_scale`` Parameter (out,) float32 from make_fp8_layer; plain layers have none.

        def forward_comfy_cast_weights(self, input, *args, **kwargs):
            weight_scale = getattr(self, "weight_scale", None)
            if weight_scale is None:
                return super().forward_comfy_cast_weights(input, *args, **kwargs)
            if getattr(self, "weight_function", None) or getattr(self, "weight_lowvram_function", None):
                raise ValueError(LORA_ON_FP8_MESSAGE)
            if getattr(self, "fp8_compute", False) and self.weight.dtype == FP8_STORAGE_DTYPE:
                return self._forward_fp8_matmul(input, weight_scale)
            if not HAS_UNCAST:
                weight, bias = comfy.ops.cast_bias_weight(self, input)  # hosts before the offloadable API
                return _scaled_linear(input, weight, bias, weight_scale)
            # The offloadable cast lets ComfyUI stream / pin the weight; it must be released after its last use.
            weight, bias, offload_stream = comfy.ops.cast_bias_weight(self, input, offloadable=True)
            try:
                return _scaled_linear(input, weight, bias, weight_scale)
            finally:
                comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)

        def _forward_fp8_matmul(self, input, weight_scale):
            """The opt-in fp8-compute path (``fp8_fast``): the weight is moved in fp8, never de-quantised."""
            if not HAS_UNCAST:
                weight, bias = comfy.ops.cast_bias_weight(self, input, dtype=self.weight.dtype, bias_dtype=input.dtype)
                return fp8_matmul_linear(input, weight, bias, weight_scale)
            weight, bias, offload_stream = comfy.ops.cast_bias_weight(self, input, dtype=self.weight.dtype,
                                                                      bias_dtype=input.dtype, offloadable=True)
            try:
                return fp8_matmul_linear(input, weight, bias, weight_scale)
            finally:
                comfy.ops.uncast_bias_weight(self, weight, bias, offload_stream)


def _scaled_linear(input: torch.Tensor, weight: torch.Tensor, bias, weight_scale: torch.Tensor) -> torch.Tensor:
    """``F.linear`` with the cast fp8 weight de-quantised by its per-row scale, in the weight's dtype."""
    scale = comfy.model_management.cast_to(weight_scale, dtype=weight.dtype, device=weight.device)
    return F.linear(input, weight * scale[:, None], bias)


def fp8_patched_keys(patcher) -> list[str]:
    """The keys of ``patcher``'s weight patches (LoRA etc.) that land on an fp8-stored layer (one with a
    ``weight_scale``), sorted."""
    found = []
    for key in getattr(patcher, "patches", {}):
        if not key.endswith(".weight"):
            continue
        try:
            module = patcher.model.get_submodule(key[: -len(".weight")])
        except AttributeError:
            continue
        if getattr(module, "weight_scale", None) is not None:
            found.append(key)
    return sorted(found)


def refuse_lora_on_fp8(patcher, *unused_load_args) -> None:
    """ComfyUI ``ON_LOAD`` callback of the DiT patchers with fp8-stored layers: raises a ValueError when weight
    patches touch an fp8 layer (a full load has just added them into the fp8 weight, unscaled)."""
    keys = fp8_patched_keys(patcher)
    if keys:
        raise ValueError(f"{LORA_ON_FP8_MESSAGE} (patched fp8 layers: {keys[:3]}{' ...' if len(keys) > 3 else ''}).")


def make_fp8_layer(linear: torch.nn.Module, weight_scale: torch.Tensor,
                   storage_dtype: torch.dtype = FP8_STORAGE_DTYPE) -> None:
    """Turn ``linear`` (an :class:`Ideogram4Fp8Ops.Linear`) into an fp8 layer: an empty fp8 weight of its shape
    and a ``weight_scale`` (out,) float32 Parameter holding ``weight_scale``; ``load_state_dict`` then loads both
    without converting the fp8 weight."""
    out_features, in_features = linear.out_features, linear.in_features
    if tuple(weight_scale.shape) != (out_features,):
        raise ValueError(f"weight_scale of shape {tuple(weight_scale.shape)} does not fit a Linear with "
                         f"{out_features} output rows")
    device = linear.weight.device if getattr(linear, "weight", None) is not None else None
    linear.weight = torch.nn.Parameter(
        torch.empty((out_features, in_features), dtype=storage_dtype, device=device), requires_grad=False
    )
    linear.weight_scale = torch.nn.Parameter(weight_scale.to(torch.float32), requires_grad=False)
