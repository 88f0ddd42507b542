"""bitsandbytes NF4 de-quantisation in PyTorch, on any device, without bitsandbytes.

An NF4 weight as bitsandbytes saves it (``Linear4bit`` / ``Params4bit``, the official ``ideogram-4-nf4`` files):

* ``<name>.weight``: uint8, two 4-bit codes per byte over the weight flattened in row-major order, the *high*
  nibble first (element ``2 i`` is ``byte[i] >> 4``, element ``2 i + 1`` is ``byte[i] & 0xF``); stored with
  shape ``(ceil(n / 2), 1)``.
* ``<name>.weight.absmax``: float32, one scale per block of ``blocksize`` consecutive elements (64 officially;
  the last block may be shorter). With double quantisation ("compress_statistics") these scales are themselves
  quantised (``nested_absmax``/``nested_quant_map`` sidecars); the official release does not use it.
* ``<name>.weight.quant_map``: float32 (16,), the code table (the NF4 values below).
* ``<name>.weight.quant_state.bitsandbytes__nf4``: uint8, the UTF-8 bytes of a JSON object
  ``{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [out, in]}``.

De-quantised value = ``code[nibble] * absmax[block]``, the product in float32, rounded once to the output dtype —
what bitsandbytes' kernels compute.
"""

from __future__ import annotations

import json
import math

import torch

from .blockwise import dequantize_blockwise

# The 16 NormalFloat-4 levels, in code order 0..15. Source: QLoRA (Dettmers et al. 2023, arXiv:2305.14314,
# appendix E) as hard-coded in bitsandbytes (`functional.get_4bit_type("nf4")`). Definition: 8 quantiles of the
# standard normal at probabilities linspace(0.9677083, 0.5, 9)[:-1], 7 negated ones at linspace(0.9677083, 0.5,
# 8)[:-1], and 0, sorted and divided by the largest, so the table spans [-1, 1] with an exact zero.
NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

# Output dtypes a bitsandbytes quant state may name (its JSON spells them without the "torch." prefix).
_QUANT_STATE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    blocksize: int = 64,
    quant_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """De-quantise one bitsandbytes NF4 tensor.

    packed: uint8, ``ceil(n / 2)`` bytes in any shape (bitsandbytes stores ``(ceil(n / 2), 1)``), high nibble first.
    absmax: one scale per block, ``ceil(n / blocksize)`` of them (float32 in the files).
    shape: the logical shape, e.g. ``(out_features, in_features)``; ``n`` is its element count.
    quant_map: the file's 16-value code table (``weight.quant_map``); :data:`NF4_CODE` when ``None``.
    Returns ``shape`` in ``dtype`` on ``packed``'s device.
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if packed.dtype != torch.uint8:
        raise TypeError(f"dequantize_nf4: expected the packed weight as uint8, got {packed.dtype}")
    if blocksize <= 0:
        raise ValueError(f"dequantize_nf4: blocksize must be positive, got {blocksize}")
    if packed.numel() != (n + 1) // 2:
        raise ValueError(f"dequantize_nf4: a weight of shape {shape} packs into {(n + 1) // 2} bytes "
                         f"(two 4-bit codes per byte), got {packed.numel()} (packed shape {tuple(packed.shape)})")
    n_blocks = -(-n // blocksize)
    if absmax.numel() != n_blocks:
        raise ValueError(f"dequantize_nf4: a weight of shape {shape} in blocks of {blocksize} needs {n_blocks} "
                         f"absmax values, got {absmax.numel()}; a double-quantised (nested) absmax must be "
                         f"de-quantised first, and the block size must match the quant state")
    device = packed.device
    if quant_map is None:
        code = torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    else:
        if quant_map.numel() != 16:
            raise ValueError(f"dequantize_nf4: the quant_map must hold the 16 code values, got {quant_map.numel()}")
        code = quant_map.reshape(16).to(device=device, dtype=torch.float32)
    # One lookup per byte: row b of the pair table is (code[b >> 4], code[b & 0xF]).
    byte_values = torch.arange(256, dtype=torch.int32, device=device)
    pair_table = torch.stack(
        [code.index_select(0, byte_values >> 4), code.index_select(0, byte_values & 0xF)], dim=-1)
    scales = absmax.reshape(n_blocks, 1).to(device=device, dtype=torch.float32)
    flat = packed.reshape(-1)
    if blocksize % 2 or n % blocksize:
        # A block boundary inside a byte, or a short last block: pad the codes to whole blocks (rare layouts).
        codes = torch.cat([_unpack_codes(flat), flat.new_zeros(n_blocks * blocksize - 2 * flat.numel())])
        values = code.index_select(0, codes.to(torch.int32)).view(n_blocks, blocksize).mul_(scales)
        return values.view(-1)[:n].to(dtype).view(shape)

    def dequantize_blocks(block_bytes: torch.Tensor, block_scales: torch.Tensor) -> torch.Tensor:
        values = pair_table.index_select(0, block_bytes.reshape(-1).to(torch.int32))
        return values.view(block_scales.shape[0], blocksize).mul_(block_scales)

    blocks = flat.view(n_blocks, blocksize // 2)
    return dequantize_blockwise(blocks, blocksize, dtype, dequantize_blocks, scales).view(shape)


def _unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> their 4-bit codes, high nibble first."""
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).view(-1)


def parse_bnb_quant_state(blob: torch.Tensor) -> dict:
    """Read a ``<name>.weight.quant_state.bitsandbytes__nf4`` tensor (uint8 UTF-8 JSON).

    Returns ``{"quant_type": "nf4", "blocksize": int, "dtype": torch.dtype, "shape": tuple[int, ...]}``.
    Refuses other 4-bit types and double-quantised (nested) states, which the official files do not use.
    """
    try:
        state = json.loads(bytes(blob.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"bitsandbytes quant state: not the JSON bitsandbytes writes ({error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"bitsandbytes quant state: expected a JSON object, got {type(state).__name__}")
    missing = [key for key in ("quant_type", "blocksize", "dtype", "shape") if key not in state]
    if missing:
        raise ValueError(f"bitsandbytes quant state: missing {', '.join(missing)} in {state}")
    if state["quant_type"] != "nf4":
        raise ValueError(f"bitsandbytes quant state: quant_type {state['quant_type']!r} is not read, only 'nf4' "
                         f"(the type of the official ideogram-4-nf4 files)")
    nested = sorted(key for key in state if key.startswith("nested_"))
    if nested:
        raise ValueError(f"bitsandbytes quant state: double-quantised (nested) absmax ({', '.join(nested)}) is not "
                         f"read; save the weights with compress_statistics=False, as the official nf4 files are")
    if state["dtype"] not in _QUANT_STATE_DTYPES:
        raise ValueError(f"bitsandbytes quant state: dtype {state['dtype']!r} is not one of "
                         f"{', '.join(_QUANT_STATE_DTYPES)}")
    blocksize = state["blocksize"]
    shape = state["shape"]
    if not (isinstance(blocksize, int) and blocksize > 0):
        raise ValueError(f"bitsandbytes quant state: blocksize must be a positive integer, got {blocksize!r}")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise ValueError(f"bitsandbytes quant state: shape must be a list of sizes, got {shape!r}")
    return {"quant_type": "nf4", "blocksize": blocksize, "dtype": _QUANT_STATE_DTYPES[state["dtype"]],
            "shape": tuple(shape)}
