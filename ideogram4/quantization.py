"""fp8 weight de-quantisation, exactly as the two published fp8 formats define it.

* Official ``ideogram-ai/ideogram-4-fp8`` (per output row): ``<name>.weight`` float8_e4m3fn ``(out, in)`` plus
  ``<name>.weight_scale`` float32 ``(out,)``. The official ``Fp8Linear`` rebuilds the weight in the compute
  dtype as ``weight.to(dtype) * weight_scale.to(dtype)[:, None]`` — the scale is rounded to ``dtype``
  *before* the multiply and the product is rounded to ``dtype``. Doing the product in float32 and rounding
  once is *not* bit-identical in bf16, so :func:`dequantize_fp8_rowwise` does exactly the official steps.
* ComfyUI ``comfy_quant`` (per tensor, the Comfy-Org ``*_fp8_scaled`` files): ``<layer>.comfy_quant`` holds
  the UTF-8 bytes of a JSON object such as ``{"format": "float8_e4m3fn"}``, ``<layer>.weight`` is stored in
  that fp8 dtype and ``<layer>.weight_scale`` is one scalar. ComfyUI keeps the scale as float32 and its
  reference (PyTorch) kernel de-quantises as ``weight.to(dtype) * scale.to(dtype)``; that is what
  :func:`dequantize_fp8_per_tensor` does. (ComfyUI's CUDA/Triton kernels multiply in float32 and round
  once, which can differ by one bf16 ulp; ComfyUI's own result therefore depends on the backend.)

:func:`fp8_matmul_linear` is the opt-in approximate alternative to de-quantising: the activations are quantised
per row too and the product runs as one fp8 matrix multiply (``torch._scaled_mm``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import torch

from .gguf_dequant import dequantize_gguf
from .nf4 import dequantize_nf4
from .safetensors_io import CheckpointError

# Largest finite float8_e4m3fn magnitude; the official quantiser maps each row's max |w| onto it.
FP8_E4M3_MAX = 448.0
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# ComfyUI comfy_quant "format" values that are plain per-tensor scaled fp8, with their storage dtype.
COMFY_FP8_FORMATS: dict[str, torch.dtype] = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}


def dequantize_fp8_rowwise(
    weight_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Official per-row de-quantisation: ``weight_fp8.to(dtype) * scale.to(dtype)[:, None]``.

    weight_fp8: (out, in) float8; scale: (out,) (any float dtype, stored float32 officially).
    Returns (out, in) in ``dtype``.
    """
    if weight_fp8.dim() != 2:
        raise ValueError(
            f"dequantize_fp8_rowwise: expected a 2-D (out, in) weight, got shape {tuple(weight_fp8.shape)}")
    if scale.shape != (weight_fp8.shape[0],):
        raise ValueError(
            f"dequantize_fp8_rowwise: expected a per-row scale of shape ({weight_fp8.shape[0]},) for a weight of shape "
            f"{tuple(weight_fp8.shape)}, got {tuple(scale.shape)}"
        )
    return weight_fp8.to(dtype) * scale.to(dtype)[:, None]


def dequantize_fp8_per_tensor(
    weight_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """ComfyUI per-tensor de-quantisation: scale taken as float32 (as ComfyUI stores it), then
    ``weight_fp8.to(dtype) * scale.to(dtype)``.

    weight_fp8: any shape, float8; scale: one element (shape () or (1,)). Returns weight's shape in ``dtype``.
    """
    if scale.numel() != 1:
        raise ValueError(f"dequantize_fp8_per_tensor: expected a single-element scale, got shape {tuple(scale.shape)}")
    return weight_fp8.to(dtype) * scale.reshape(()).to(torch.float32).to(dtype)


def parse_comfy_quant(tensor: torch.Tensor, where: str = "comfy_quant") -> dict:
    """Decode a ``<layer>.comfy_quant`` tensor (uint8 bytes of a JSON object) into a dict with a ``"format"``.

    ``where`` names the tensor (file and key) in error messages.
    """
    try:
        config = json.loads(tensor.detach().cpu().to(torch.uint8).numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{where}: not a UTF-8 JSON comfy_quant entry ({error}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("format"), str):
        raise CheckpointError(f'{where}: expected a JSON object with a "format" string, found {config!r}.')
    return config


def fp8_scaling(where: str, weight_dtype: torch.dtype, weight_shape, scale_shape, comfy_format: str | None = None
                ) -> str | None:
    """How a stored weight is scaled, from its dtype and shape and its sidecars' — the one reading of the fp8
    sidecars, for the DiT and the text encoder alike.

    weight_dtype / weight_shape: the weight as stored (uint8 is fp8 bytes in older ComfyUI files when a
    ``comfy_quant`` entry names the format); scale_shape: the shape of its ``weight_scale`` (or the older
    ``scale_weight``), None when it has none; comfy_format: the ``comfy_quant`` format, if any (an fp8 one).
    Returns "rowwise" (scale ``(out,)`` or ``(out, 1)``), "per_tensor" (one value), "unscaled" (fp8 without a scale,
    used as stored as ComfyUI does) or None for a plain weight. Raises CheckpointError, prefixed with ``where``, for
    any other combination.
    """
    if comfy_format is not None:
        storage = COMFY_FP8_FORMATS[comfy_format]
        if weight_dtype not in (storage, torch.uint8):
            raise CheckpointError(f"{where}: marked {comfy_format!r} by comfy_quant but stored as {weight_dtype}.")
        if scale_shape is None:
            raise CheckpointError(f"{where}: has a comfy_quant entry but no weight_scale.")
        if math.prod(scale_shape) != 1:
            raise CheckpointError(f"{where}: the weight_scale should be a single per-tensor scale for comfy_quant "
                                  f"format {comfy_format!r}, found shape {list(scale_shape)}.")
        return "per_tensor"
    if weight_dtype not in FP8_DTYPES:
        if scale_shape is not None:
            raise CheckpointError(f"{where}: has a weight scale but is stored as {weight_dtype}, not float8; this "
                                  "quantisation is not supported.")
        return None
    if scale_shape is None:
        return "unscaled"
    scale_shape = tuple(scale_shape)
    if len(weight_shape) == 2 and scale_shape in ((weight_shape[0],), (weight_shape[0], 1)):
        return "rowwise"
    if math.prod(scale_shape) == 1:
        return "per_tensor"
    raise CheckpointError(f"{where}: shape mismatch: the weight scale fits neither per-tensor (one value) nor per-row "
                          f"({weight_shape[0]},) scaling of a weight of shape {list(weight_shape)}; found "
                          f"{list(scale_shape)}.")


def rowwise_scale_from_per_tensor(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """A per-tensor scale as the equivalent per-row float32 ``(rows,)`` scale.

    Exact: with it, the per-row formula gives the same bits as the per-tensor one (ComfyUI keeps the
    scale in float32 before rounding it to the compute dtype, as the per-row formula does).
    """
    return scale.reshape(()).to(torch.float32).expand(rows).contiguous()


def as_row_scale(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """A stored weight scale, per tensor (one value) or per row (``rows`` values), as the per-row float32 ``(rows,)``
    scale of :func:`dequantize_fp8_rowwise` (exact for a per-tensor scale, see :func:`rowwise_scale_from_per_tensor`)."""
    if scale.numel() == 1:
        return rowwise_scale_from_per_tensor(scale, rows)
    return scale.reshape(-1).to(torch.float32)


def quantize_fp8_rowwise(weight: torch.Tensor, storage_dtype: torch.dtype = torch.float8_e4m3fn
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A floating ``(out, in)`` weight -> (fp8 weight, float32 per-row scale ``(out,)``) with each row's max |w|
    mapped onto the largest finite fp8 value (rows of zeros get scale 1), the official quantiser's rule. Lossy:
    the pack uses it only when asked to store an unquantised checkpoint in fp8."""
    rows = weight.float()
    amax = rows.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    quantised = (rows / scale[:, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(storage_dtype)
    return quantised, scale


@functools.lru_cache(maxsize=None)
def _fp8_matmul_runs(device: str, out_dtype: torch.dtype) -> bool:
    a = torch.ones((16, 16), device=device).to(torch.float8_e4m3fn)
    b = torch.ones((16, 16), device=device).to(torch.float8_e4m3fn)
    ones_a = torch.ones((16, 1), device=device)
    ones_b = torch.ones((1, 16), device=device)
    try:
        out = torch._scaled_mm(a, b.t(), scale_a=ones_a, scale_b=ones_b, out_dtype=out_dtype)
        return bool((out == 16).all())
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False


def supports_fp8_matmul(device, out_dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether :func:`fp8_matmul_linear` runs on ``device`` with output ``out_dtype``: tried once per device and
    dtype on a 16 x 16 product, since row-wise scaled fp8 products depend on the GPU (compute capability 8.9+),
    the PyTorch build (not on Windows builds for some GPUs) and the output dtype, not on the device type alone."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm") or device.type not in ("cpu", "cuda"):
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return False
    return _fp8_matmul_runs(str(device), out_dtype)


def fp8_matmul_linear(input: torch.Tensor, weight_fp8: torch.Tensor, bias, weight_scale: torch.Tensor) -> torch.Tensor:
    """``input @ W.T + bias`` as one fp8 matrix multiply: each input row is scaled by its max |x| / 448 (rounded to
    the input dtype) and cast to float8_e4m3fn; ``torch._scaled_mm`` accumulates in float32 and applies both
    per-row scales. Approximate: the activations keep 3 mantissa bits (about 3.7 % relative error per layer on
    random data, against about 2.6 % for the weight-only de-quantisation)."""
    shape = input.shape
    rows = input.reshape(-1, shape[-1])
    # Clamped after the cast so that an all-zero row keeps a non-zero scale in any dtype (fp16 too).
    row_scale = (rows.abs().amax(dim=1, keepdim=True) / FP8_E4M3_MAX).to(rows.dtype)
    row_scale = row_scale.clamp(min=torch.finfo(rows.dtype).tiny)
    rows_fp8 = (rows / row_scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(weight_fp8.dtype)
    scale_b = weight_scale.to(device=rows.device, dtype=torch.float32).reshape(1, -1)
    out = torch._scaled_mm(rows_fp8, weight_fp8.t(), scale_a=row_scale.float(), scale_b=scale_b,
                           out_dtype=input.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], weight_fp8.shape[0])


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """How a Linear's weight is stored when it is kept quantised in memory, and how to rebuild it.

    The layer holds the stored tensor as its ``weight`` and the sidecar tensors named by :attr:`sidecars` next to
    it; :meth:`dequantize` rebuilds the weight of logical ``shape`` in the compute dtype, with tensor operations on
    the device the tensors are on (no numpy), so a layer can do it each time it runs.

    kind:
    * ``"fp8_rowwise"``: float8 weight + ``weight_scale`` float32 ``(out,)``, the official rule (per-tensor scales
      are stored as their exact per-row equivalent);
    * ``"gguf"``: the GGML block bytes, uint8 ``(rows, bytes per row)``, of type ``qtype``
      (:func:`ideogram4.gguf_dequant.dequantize_gguf`);
    * ``"nf4"``: bitsandbytes NF4 bytes + ``weight_absmax`` (one float32 per ``blocksize`` values) and
      ``weight_quant_map`` (the 16 code values) (:func:`ideogram4.nf4.dequantize_nf4`);
    * ``"comfy"``: a ComfyUI ``comfy_quant`` format (``comfy_format``, e.g. ``"nvfp4"``) that only ComfyUI's own
      quantised layers (``comfy.quant_ops``) read; the core passes the stored tensors on and never de-quantises them.
    """

    kind: str
    shape: tuple[int, ...]
    qtype: int | None = None
    blocksize: int = 64
    comfy_format: str | None = None

    @property
    def sidecars(self) -> tuple[str, ...]:
        return {"fp8_rowwise": ("weight_scale",), "nf4": ("weight_absmax", "weight_quant_map")}.get(self.kind, ())

    def dequantize(self, stored: torch.Tensor, sidecars: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if self.kind == "fp8_rowwise":
            return dequantize_fp8_rowwise(stored, sidecars["weight_scale"], dtype)
        if self.kind == "gguf":
            return dequantize_gguf(stored, self.qtype, self.shape, dtype)
        if self.kind == "nf4":
            return dequantize_nf4(stored, sidecars["weight_absmax"], self.shape, dtype, blocksize=self.blocksize,
                                  quant_map=sidecars["weight_quant_map"])
        raise ValueError(f"unknown quantised weight kind {self.kind!r}")
