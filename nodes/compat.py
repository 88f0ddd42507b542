"""Feature detection for the ComfyUI APIs that differ between the supported hosts (MIN_COMFYUI_VERSION .. 0.33),
and what the running host ships that the pack uses (its Qwen tokenizer).

Newer APIs are detected, never inferred from a version string.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pathlib
import types

import comfy.latent_formats
import comfy.model_patcher
import comfy.ops
import torch

from ..ideogram4.constants import PIXELS_PER_TOKEN, TOKEN_CHANNELS

# The oldest ComfyUI the pack supports and is tested on (the V3 node API with everything the nodes use).
MIN_COMFYUI_VERSION = "0.3.64"
# The Qwen2.5 tokenizer ComfyUI bundles beside its text-encoder code (the same vocabulary as Qwen3-VL's for text).
HOST_QWEN_TOKENIZER_FOLDER = "qwen25_tokenizer"


def host_qwen_tokenizer_dir() -> pathlib.Path | None:
    """The running ComfyUI's bundled Qwen tokenizer folder, found from its imported ``comfy.text_encoders`` package
    (wherever that ComfyUI is installed), or None when this host ships none."""
    package = importlib.import_module("comfy.text_encoders")  # a namespace package: __path__, no __file__
    for folder in getattr(package, "__path__", []):
        candidate = pathlib.Path(folder) / HOST_QWEN_TOKENIZER_FOLDER
        if candidate.is_dir():
            return candidate
    return None


def comfyui_version() -> str | None:
    """The running ComfyUI's version string (its ``comfyui_version`` module), or None when it has none."""
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def warn_if_older_than_supported() -> bool:
    """Log a warning when the running ComfyUI is older than :data:`MIN_COMFYUI_VERSION`; True if it is."""
    version = comfyui_version()
    if version is None or _version_tuple(version) >= _version_tuple(MIN_COMFYUI_VERSION):
        return False
    logging.warning("Ideogram 4 (reference): this ComfyUI is %s; the pack supports %s and newer. Update ComfyUI "
                    "if a node fails.", version, MIN_COMFYUI_VERSION)
    return True


def patcher_class():
    """``CoreModelPatcher`` where the host has it (resolved at call time: ComfyUI's main.py rebinds it to the
    dynamic-VRAM patcher when that is on), else the classic ``ModelPatcher``."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


@functools.lru_cache(maxsize=None)
def _patcher_with(mixin: type, base: type) -> type:
    # One class per (mixin, base): a patcher's clone() builds ``self.__class__``, so clones keep the mixin.
    return type(f"{mixin.__name__}{base.__name__}", (mixin, base), {})


def new_patcher(model: torch.nn.Module, load_device, offload_device, mixin: type | None = None,
                dynamic: bool = True):
    """A patcher for ``model`` that ``comfy.model_management.load_models_gpu`` can load, stream and free:
    :func:`patcher_class` (or the classic ``ModelPatcher`` when ``dynamic`` is False), with ``mixin`` first in its
    bases when given. The dynamic-VRAM patcher hands CPU models to a plain ``ModelPatcher``; the mixin then goes
    on that class."""
    base = patcher_class() if dynamic else comfy.model_patcher.ModelPatcher
    if mixin is None:
        return base(model, load_device=load_device, offload_device=offload_device)
    patcher = _patcher_with(mixin, base)(model, load_device=load_device, offload_device=offload_device)
    if not isinstance(patcher, mixin):
        patcher = _patcher_with(mixin, comfy.model_patcher.ModelPatcher)(model, load_device=load_device,
                                                                         offload_device=offload_device)
    return patcher


def is_dynamic(patcher) -> bool:
    """True for a dynamic-VRAM patcher (weights must then be assigned, not copied, when loaded)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def load_weights(patcher, module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``module`` (owned by ``patcher``) strictly, **emptying** ``state_dict``.

    ``assign=True`` under a dynamic patcher (ComfyUI pages the assigned tensors in per forward), a plain copy
    otherwise, as ComfyUI's own loaders do. The tensors are taken out of ``state_dict`` one layer at a time and
    dropped once the layer holds them, so a state dict the loader converted in memory (cast to the compute dtype,
    de-quantised, quantised) is released while the model fills: the peak stays near one model instead of two.
    A mismatch raises a ValueError naming the keys.
    """
    kwargs = {}
    if "assign" in inspect.signature(module.load_state_dict).parameters:
        kwargs["assign"] = is_dynamic(patcher)
    by_layer: dict[str, list[str]] = {}
    for key in list(state_dict):
        by_layer.setdefault(key.rpartition(".")[0], []).append(key)
    loaded: set[str] = set()
    for layer_name, keys in by_layer.items():
        try:
            layer = module.get_submodule(layer_name) if layer_name else module
        except AttributeError:
            raise ValueError(f"the weights do not fit the model: unexpected {sorted(keys)[:5]}") from None
        # A layer loads all its own keys in one call (an fp8 Linear reads ``weight`` with ``weight_scale``).
        layer_state = {key[len(layer_name) + 1:] if layer_name else key: state_dict.pop(key) for key in keys}
        missing, unexpected = layer.load_state_dict(layer_state, strict=False, **kwargs)
        del layer_state
        missing = [key for key in missing if "." not in key]  # a child's keys come with the child's own call
        if missing or unexpected:
            raise ValueError(f"the weights of {layer_name or 'the model'} do not fit: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        loaded.update(keys)
    # A layer that got no key at all had no load call above: list the model's keys that were never loaded. (A
    # Linear that comfy.ops builds lazily under dynamic VRAM has none to list until it loads; the core loaders have
    # already checked that the file holds every key the architecture needs.)
    missing = set(module.state_dict()) - loaded
    if missing:
        raise ValueError(f"the weights do not fit the model: missing {sorted(missing)[:5]}, unexpected []")


class PyTorchStateDictLoading:
    """Mixin, first in the bases of a comfy.ops layer: PyTorch's own ``_load_from_state_dict`` (every parameter,
    buffer and extra key such as ``weight_scale``), not the lazy weight/bias-only loader comfy.ops layers get under
    dynamic VRAM. ComfyUI builds a layer with a loader of its own eagerly, so ``state_dict()`` lists its keys."""

    def _load_from_state_dict(self, *args, **kwargs):
        return torch.nn.Module._load_from_state_dict(self, *args, **kwargs)


class EagerLoadOps(comfy.ops.disable_weight_init):
    """``comfy.ops.disable_weight_init`` whose Linear and Embedding always hold their weights from construction.

    Under dynamic VRAM (``comfy.memory_management.aimdo_enabled``, ComfyUI >= 0.12 on NVIDIA) comfy.ops builds
    those two layers with ``weight=None`` and fills them lazily from the state dict, so ``state_dict()`` lacks
    their keys and the core loaders (which check the file against ``state_dict()`` and load strictly) refuse
    the file. ComfyUI skips the lazy init for a layer class with its own ``_load_from_state_dict``
    (:class:`PyTorchStateDictLoading`). Same layers and results as ``disable_weight_init`` on every host.
    """

    class Linear(PyTorchStateDictLoading, comfy.ops.disable_weight_init.Linear):
        pass

    class Embedding(PyTorchStateDictLoading, comfy.ops.disable_weight_init.Embedding):
        pass


def cli_flag(name: str) -> bool:
    """Whether ComfyUI was started with the flag ``name`` (argparse spelling, e.g. ``fp16_unet``); False for a flag
    this host does not have."""
    import comfy.cli_args

    return bool(getattr(comfy.cli_args.args, name, False))


def has_offloadable_cast() -> bool:
    """True where ``comfy.ops.cast_bias_weight`` takes ``offloadable=True`` and the cast weight must be released
    with ``comfy.ops.uncast_bias_weight`` after its last use (ComfyUI >= 0.4)."""
    return hasattr(comfy.ops, "uncast_bias_weight")


def archive_dtypes(module: torch.nn.Module) -> None:
    """Record parameter dtypes where the host needs them for dynamic loading (2026 hosts); no-op elsewhere."""
    import comfy.model_management

    archive = getattr(comfy.model_management, "archive_model_dtypes", None)
    if archive is not None:
        archive(module)


class Ideogram4LatentFormat(comfy.latent_formats.LatentFormat):
    """The pack's LATENT on hosts without ``latent_formats.Flux2``: 128 channels at 1/16 resolution, stored as is
    (no scale or shift: the samples already are Ideogram-normalised tokens). No RGB preview factors."""

    latent_channels = TOKEN_CHANNELS
    spacial_downscale_ratio = PIXELS_PER_TOKEN

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


def latent_format_class():
    """The LATENT format class of Ideogram 4 samples: ComfyUI's FLUX.2 format where the host has it (same
    128-channel layout; gives Latent2RGB previews), else :class:`Ideogram4LatentFormat`."""
    return getattr(comfy.latent_formats, "Flux2", None) or Ideogram4LatentFormat


def latent_format():
    """An instance of :func:`latent_format_class`."""
    return latent_format_class()()


def inference_dtype(base_model) -> torch.dtype:
    """The dtype a ComfyUI ``BaseModel`` computes in (``get_dtype_inference`` on newer hosts; on older ones the
    manual-cast dtype if set, else the weight dtype)."""
    getter = getattr(base_model, "get_dtype_inference", None)
    if getter is not None:
        return getter()
    return base_model.manual_cast_dtype or base_model.get_dtype()


# The ComfyUI release known to read the Comfy-Org int8_convrot / nvfp4 files through comfy.quant_ops.
COMFY_QUANT_OPS_VERSION = "0.33"


def comfy_quant_formats() -> frozenset[str]:
    """The ``comfy_quant`` formats this host's own quantised layers read (``comfy.quant_ops.QUANT_ALGOS`` with
    ``comfy.ops.mixed_precision_ops``); empty on hosts without them."""
    try:
        import comfy.quant_ops
    except ImportError:
        return frozenset()
    algos = getattr(comfy.quant_ops, "QUANT_ALGOS", None)
    if algos is None or not hasattr(comfy.ops, "mixed_precision_ops") or not hasattr(comfy.ops, "pick_operations"):
        return frozenset()
    return frozenset(algos)


def comfy_quantized_operations(compute_dtype: torch.dtype, load_device):
    """ComfyUI's own mixed-precision layers, set up for ``load_device`` the way ComfyUI sets them up for a native
    model whose file carries ``comfy_quant`` entries (formats the device cannot compute natively are emulated)."""
    config = types.SimpleNamespace(quant_config={"mixed_ops": True})
    return comfy.ops.pick_operations(None, compute_dtype, load_device, model_config=config)


def prompt_server():
    """The running ComfyUI server (``server.PromptServer.instance``), or None where ComfyUI was imported without
    one (a tool, an in-process test)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)
