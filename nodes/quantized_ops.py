"""Linear weights kept quantised inside ComfyUI (DiT and text encoder), de-quantised per layer when it runs.

A quantised Linear holds its stored weight (float8, or uint8 blocks) as ``weight``, the sidecar tensors its format
needs next to it (``weight_scale`` for fp8), and ``quantized``, an :class:`ideogram4.quantization.QuantizedWeight`
saying how to rebuild the ``(out, in)`` weight. Every call casts the *stored* weight through ComfyUI's
``cast_bias_weight`` (which streams it from the offload device when the layer did not fit in VRAM), rebuilds it in
the compute dtype on the compute device, then applies the weight patches (LoRA) — always to the de-quantised
weight, never to the stored one:

* low-VRAM / dynamic loads: ComfyUI puts the patches in the layer's ``weight_function`` / ``weight_lowvram_function``
  and its cast would apply them to the raw stored weight; the layer hides them from the cast and applies them after
  de-quantising (:func:`_stored_weight_cast`).
* full loads: ComfyUI's patcher would merge a patch into the stored weight. :class:`QuantizedWeightPatching`
  (mixed into the pack's patchers) leaves the stored data alone and gives the layer a new Parameter over the same
  data that carries the patch; the original Parameter goes into the patcher's backup, so unpatching (or a partial
  unload) restores it and the patch is gone with the carrier. Nothing is copied: the weight stays quantised.
"""

from __future__ import annotations

import collections
import contextlib

import comfy.lora
import comfy.model_management
import comfy.ops
import torch
import torch.nn.functional as F

from ..ideogram4.quantization import QuantizedWeight, fp8_matmul_linear

from . import compat
from .compat import PyTorchStateDictLoading

HAS_UNCAST = compat.has_offloadable_cast()
# The attribute of a quantised layer's weight Parameter that carries the patches a full load gave it.
PATCH_ATTRIBUTE = "ideogram4_weight_patch"
_Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])  # ComfyUI's backup record


class RuntimeWeightPatch:
    """The weight patches of ``key`` in a patcher's ``patches``, applied to a de-quantised weight in its dtype
    (as ComfyUI's ``LowVramPatch`` does for streamed layers)."""

    def __init__(self, key: str, patches: dict):
        self.key = key
        self.patches = patches

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return comfy.lora.calculate_weight(self.patches[self.key], weight, self.key, intermediate_dtype=weight.dtype)


class Ideogram4QuantizedOps(comfy.ops.manual_cast):
    """``comfy.ops.manual_cast`` whose Linear may hold a quantised weight (see the module docstring).

    Linear and Embedding always hold their weights from construction (:class:`compat.PyTorchStateDictLoading`), so
    the core loaders can list and assign every key under dynamic VRAM too, and the sidecars load with the weight.
    """

    class Embedding(PyTorchStateDictLoading, comfy.ops.manual_cast.Embedding):
        pass

    class Linear(PyTorchStateDictLoading, comfy.ops.manual_cast.Linear):
        quantized: QuantizedWeight | None = None  # set by make_quantized_layer; None: a plain manual_cast Linear
        fp8_compute = False  # fp8_fast: multiply in fp8 instead of de-quantising (fp8 layers only)

        def forward_comfy_cast_weights(self, input, *args, **kwargs):
            if self.quantized is None:
                return super().forward_comfy_cast_weights(input, *args, **kwargs)
            if self.fp8_compute and not _has_weight_patches(self):
                with _stored_weight_cast(self, input) as (weight, bias):
                    return fp8_matmul_linear(input, weight, bias, self._sidecars_on(weight.device)["weight_scale"])
            with _stored_weight_cast(self, input) as (weight, bias):
                return F.linear(input, self.dequantized_weight(weight, input.dtype), bias)

        def _sidecars_on(self, device) -> dict[str, torch.Tensor]:
            return {name: comfy.model_management.cast_to(getattr(self, name), device=device)
                    for name in self.quantized.sidecars}

        def dequantized_weight(self, stored: torch.Tensor, dtype: torch.dtype, patches=None) -> torch.Tensor:
            """``stored`` (this layer's weight as cast to the compute device) de-quantised to ``dtype``, with every
            weight patch the layer has (``patches`` if given, else the ones captured by the running cast)."""
            weight = self.quantized.dequantize(stored, self._sidecars_on(stored.device), dtype)
            for patch in (_weight_patches(self) if patches is None else patches):
                weight = patch(weight)
            return weight


def _weight_patches(layer) -> list:
    """The layer's weight patches in ComfyUI's order: merged (full load), streamed (low VRAM), then wrappers."""
    patches = []
    merged = getattr(layer.weight, PATCH_ATTRIBUTE, None)
    if merged is not None:
        patches.append(merged)
    lowvram = getattr(layer, "weight_lowvram_function", None)
    if lowvram is not None:
        patches.append(lowvram)
    patches.extend(getattr(layer, "weight_function", []))
    return patches


def _has_weight_patches(layer) -> bool:
    return len(_weight_patches(layer)) > 0


@contextlib.contextmanager
def _stored_weight_cast(layer, input: torch.Tensor):
    """(stored weight, bias) cast to ``input``'s device — the weight in its stored dtype with no patch applied, the
    bias in ``input``'s dtype with its patches — released on exit (hosts with the offloadable cast API).

    ComfyUI's cast applies the weight functions to whatever it casts; they belong to the de-quantised weight, so
    they are hidden from it here and :meth:`Ideogram4QuantizedOps.Linear.dequantized_weight` applies them."""
    hidden = {name: layer.__dict__.get(name) for name in ("weight_function", "weight_lowvram_function")}
    layer.weight_function = []
    layer.weight_lowvram_function = None
    try:
        if not HAS_UNCAST:  # hosts before the offloadable API
            weight, bias = comfy.ops.cast_bias_weight(layer, input, dtype=layer.weight.dtype, bias_dtype=input.dtype)
            offload_stream = None
        else:
            weight, bias, offload_stream = comfy.ops.cast_bias_weight(
                layer, input, dtype=layer.weight.dtype, bias_dtype=input.dtype, offloadable=True)
    finally:
        for name, value in hidden.items():
            if value is None:
                layer.__dict__.pop(name, None)
            else:
                setattr(layer, name, value)
    try:
        yield weight, bias
    finally:
        if HAS_UNCAST:
            comfy.ops.uncast_bias_weight(layer, weight, bias, offload_stream)


def quantized_layer_of(model: torch.nn.Module, key: str):
    """The quantised Linear whose ``weight`` is ``key`` (a state-dict key of ``model``), else None."""
    layer_name, _, param = key.rpartition(".")
    if param != "weight":
        return None
    try:
        layer = model.get_submodule(layer_name)
    except AttributeError:
        return None
    return layer if getattr(layer, "quantized", None) is not None else None


class QuantizedWeightPatching:
    """Mixin for a ComfyUI ``ModelPatcher`` class: weight patches on quantised layers are applied when the layer
    runs instead of being merged into the stored weight (see the module docstring); every other key is patched
    by ComfyUI as usual."""

    def patch_weight_to_device(self, key, device_to=None, *args, **kwargs):
        layer = quantized_layer_of(self.model, key)
        if layer is None:
            return super().patch_weight_to_device(key, device_to, *args, **kwargs)
        if kwargs.get("return_weight", False):
            # A merged weight asked for (saving, merging): the de-quantised weight with its patches, in float32.
            stored = layer.weight if device_to is None else layer.weight.to(device_to)
            patches = [RuntimeWeightPatch(key, self.patches)] if key in self.patches else []
            return layer.dequantized_weight(stored, torch.float32, patches=patches)
        if key not in self.patches:
            return super().patch_weight_to_device(key, device_to, *args, **kwargs)
        original = layer.weight
        if key not in self.backup:
            self.backup[key] = _Backup(original, False)
        data = original.data if device_to is None else original.data.to(device_to)
        carrier = torch.nn.Parameter(data, requires_grad=False)
        setattr(carrier, PATCH_ATTRIBUTE, RuntimeWeightPatch(key, self.patches))
        layer.weight = carrier
        return None


def make_quantized_layer(linear: torch.nn.Module, quantized: QuantizedWeight, stored: torch.Tensor,
                         sidecars: dict[str, torch.Tensor]) -> None:
    """Turn ``linear`` (an :class:`Ideogram4QuantizedOps.Linear`) into a quantised layer: an empty weight of
    ``stored``'s dtype and shape (``stored`` may be a meta tensor of that geometry) and one Parameter per sidecar
    holding a copy of the given tensor; ``load_state_dict`` then loads the weight (and sidecars) unconverted."""
    out_features, in_features = linear.out_features, linear.in_features
    if tuple(quantized.shape) != (out_features, in_features):
        raise ValueError(f"a quantised weight of shape {tuple(quantized.shape)} does not fit a Linear "
                         f"({out_features}, {in_features})")
    if set(sidecars) != set(quantized.sidecars):
        raise ValueError(f"a {quantized.kind} weight needs the sidecars {quantized.sidecars}, got {sorted(sidecars)}")
    device = linear.weight.device if getattr(linear, "weight", None) is not None else None
    if device is not None and device.type == "meta":
        device = None
    linear.weight = torch.nn.Parameter(torch.empty(tuple(stored.shape), dtype=stored.dtype, device=device),
                                       requires_grad=False)
    for name, tensor in sidecars.items():
        setattr(linear, name, torch.nn.Parameter(tensor.detach().to(device=device), requires_grad=False))
    linear.quantized = quantized


def comfy_operations_for(node: str, path, formats: list[str], compute_dtype: torch.dtype, load_device,
                         alternatives: str):
    """ComfyUI's own quantised layers for a file stored in ComfyUI's ``formats`` (Comfy-Org int8 / nvfp4), or a
    ValueError naming ``node``, the file, the ComfyUI version that reads it and the ``alternatives`` that work here."""
    missing = [fmt for fmt in formats if fmt not in compat.comfy_quant_formats()]
    if missing:
        raise ValueError(
            f"{node}: {path} is stored in ComfyUI's {', '.join(missing)} format, which only ComfyUI's own quantised "
            f"layers (comfy.quant_ops) read; this ComfyUI lacks them. Update ComfyUI (version "
            f"{compat.COMFY_QUANT_OPS_VERSION} reads them), or use a file that works here: {alternatives}.")
    return compat.comfy_quantized_operations(compute_dtype, load_device)
