"""Compute dtypes of the DiT and the text encoder, from ComfyUI's precision flags as native models take them.

``--bf16-unet`` / ``--fp32-unet`` (``comfy.model_management.unet_dtype``) and ``--bf16-text-enc`` /
``--fp32-text-enc`` (``text_encoder_dtype``) choose the dtype; without a flag it is bf16 (the official compute
dtype) where ComfyUI would use bf16 on the device, else fp32. Ideogram 4 computes in those two only: a flag for
another dtype (fp16, fp64, fp8 storage) is reported and the default used. The VAE takes ``vae_dtype`` directly
(``--bf16-vae`` / ``--fp32-vae``, see :mod:`.vae_nodes`).
"""

from __future__ import annotations

import logging

import comfy.model_management
import torch

from . import compat

COMPUTE_DTYPES = (torch.bfloat16, torch.float32)

# The flags of other dtypes, per model kind, as argparse names them.
_OTHER_DIT_FLAGS = ("fp16_unet", "fp64_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet", "fp8_e8m0fnu_unet")
_OTHER_TEXT_ENCODER_FLAGS = ("fp16_text_enc", "fp8_e4m3fn_text_enc", "fp8_e5m2_text_enc")


def default_compute_dtype(device) -> torch.dtype:
    """bf16 where ComfyUI would use it on ``device``, else fp32."""
    return torch.bfloat16 if comfy.model_management.should_use_bf16(device) else torch.float32


def _checked(dtype: torch.dtype, device, other_flags: tuple[str, ...], model: str) -> torch.dtype:
    if dtype in COMPUTE_DTYPES:
        return dtype
    flags = [name for name in other_flags if compat.cli_flag(name)]
    if flags:
        logging.warning("Ideogram 4: the %s computes in bf16 or fp32 only; --%s is not used for it.", model,
                        flags[0].replace("_", "-"))
    return default_compute_dtype(device)


def dit_compute_dtype(device) -> torch.dtype:
    """The DiT's compute dtype on ``device`` (``unet_dtype`` among bf16/fp32: ``--bf16-unet``, ``--fp32-unet``)."""
    dtype = comfy.model_management.unet_dtype(device, supported_dtypes=list(COMPUTE_DTYPES))
    return _checked(dtype, device, _OTHER_DIT_FLAGS, "diffusion model")


def text_encoder_compute_dtype(device) -> torch.dtype:
    """The text encoder's compute dtype on ``device`` (``--bf16-text-enc``, ``--fp32-text-enc``; ComfyUI's
    ``text_encoder_dtype`` answers fp16 when no flag is set, which here means the default)."""
    dtype = comfy.model_management.text_encoder_dtype(device)
    return _checked(dtype, device, _OTHER_TEXT_ENCODER_FLAGS, "text encoder")
