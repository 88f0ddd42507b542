"""Writers of the quantised file formats the pack reads, for tiny test and benchmark models.

* :func:`write_gguf`: a GGUF file through the ``gguf`` package's own ``GGUFWriter``; block-quantised tensors come
  from ``gguf.quants.quantize`` where the package has a quantiser (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and from
  :func:`quantize_q4_k` for Q4_K (the package de-quantises K-quants but does not quantise them).
* :func:`store_nf4`: bitsandbytes' nf4 layout (``weight`` uint8 + ``weight.absmax``, ``weight.quant_map``,
  ``weight.quant_state.bitsandbytes__nf4``), blocks of 64, nearest code.
* :func:`llama_cpp_text_encoder_names`: the pack's Qwen3-VL language-model keys as llama.cpp names them.

The quantisers pick reasonable codes; what matters to the tests is that the files are valid and that the format's
own library de-quantises them (the oracle), not how close the codes are to the originals.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import torch

from ideogram4.nf4 import NF4_CODE
from ideogram4.text_encoder_checkpoint import LLAMA_CPP_GLOBAL_NAMES, LLAMA_CPP_LAYER_NAMES

QK_K = 256

def llama_cpp_text_encoder_names(key: str) -> str:
    """The pack's language-model key as llama.cpp names it: ``layers.3.self_attn.q_proj.weight`` ->
    ``blk.3.attn_q.weight``, ``embed_tokens.weight`` -> ``token_embd.weight``, ``norm.weight`` ->
    ``output_norm.weight``."""
    stem, _, param = key.rpartition(".")
    if stem in LLAMA_CPP_GLOBAL_NAMES:
        return f"{LLAMA_CPP_GLOBAL_NAMES[stem]}.{param}"
    match = re.match(r"layers\.(\d+)\.(.+)$", stem)
    if match is None or match.group(2) not in LLAMA_CPP_LAYER_NAMES:
        raise KeyError(f"no llama.cpp name for {key!r}")
    return f"blk.{match.group(1)}.{LLAMA_CPP_LAYER_NAMES[match.group(2)]}.{param}"


def _fp16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)


def quantize_q4_k(weight: np.ndarray) -> np.ndarray:
    """A float32 ``(rows, n)`` array (``n`` a multiple of 256) -> Q4_K block bytes, uint8 ``(rows, n / 256 * 144)``.

    Per 256-value super-block: 8 sub-blocks of 32 with a 6-bit scale and a 6-bit min each, relative to the fp16
    super-block scales ``d`` and ``dmin``; 4-bit codes with ``w = d * scale * q - dmin * min`` (ggml's layout)."""
    rows, n = weight.shape
    blocks = weight.astype(np.float32).reshape(-1, 8, 32)
    low = np.minimum(blocks.min(axis=2), 0.0)
    high = blocks.max(axis=2)
    sub_scale = (high - low) / 15.0
    sub_min = -low
    d = _fp16(sub_scale.max(axis=1) / 63.0)
    dmin = _fp16(sub_min.max(axis=1) / 63.0)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(d32 > 0, np.clip(np.rint(sub_scale / d32), 0, 63), 0).astype(np.uint8)
        mins = np.where(dmin32 > 0, np.clip(np.rint(sub_min / dmin32), 0, 63), 0).astype(np.uint8)
        step = (d32 * scales)[:, :, None]
        offset = (dmin32 * mins)[:, :, None]
        codes = np.where(step > 0, np.clip(np.rint((blocks + offset) / step), 0, 15), 0).astype(np.uint8)
    packed_scales = np.zeros((blocks.shape[0], 12), dtype=np.uint8)
    packed_scales[:, 0:4] = (scales[:, 0:4] & 63) | ((scales[:, 4:8] >> 4) << 6)
    packed_scales[:, 4:8] = (mins[:, 0:4] & 63) | ((mins[:, 4:8] >> 4) << 6)
    packed_scales[:, 8:12] = (scales[:, 4:8] & 0xF) | ((mins[:, 4:8] & 0xF) << 4)
    # Sub-blocks 2c and 2c+1 share 32 bytes: the first in the low nibbles, the second in the high ones.
    nibbles = (codes[:, 0::2, :] | (codes[:, 1::2, :] << 4)).reshape(-1, 128)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed_scales,
                          nibbles], axis=1)
    return out.reshape(rows, n // QK_K * 144)


def gguf_block_size(qtype_name: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype_name]][0]


def quantize_for_gguf(weight: torch.Tensor, qtype_name: str) -> np.ndarray:
    """``weight`` stored as GGML type ``qtype_name`` (bytes for block types, values for F32/F16/BF16)."""
    import gguf

    array = weight.detach().float().numpy()
    if qtype_name == "Q4_K":
        return quantize_q4_k(array.reshape(-1, array.shape[-1]))
    if qtype_name == "F32":
        return array
    if qtype_name == "F16":
        return array.astype(np.float16)
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType[qtype_name])


def write_gguf(path: str | pathlib.Path, tensors: dict[str, torch.Tensor], type_of, architecture: str,
               metadata: dict[str, object] | None = None) -> dict[str, str]:
    """Write ``tensors`` (names as given) to a GGUF file; ``type_of(name, tensor)`` picks each GGML type name.
    A block type whose block does not divide the rows falls back to F32 (as llama.cpp's converters do).
    Returns the type each tensor got."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, int(value))
    types = {}
    for name, tensor in tensors.items():
        qtype = type_of(name, tensor)
        if qtype not in ("F32", "F16", "BF16") and (tensor.ndim < 1 or tensor.shape[-1] % gguf_block_size(qtype)):
            qtype = "F32"
        stored = quantize_for_gguf(tensor, qtype)
        raw_dtype = None if qtype in ("F32", "F16") else gguf.GGMLQuantizationType[qtype]
        writer.add_tensor(name, stored, raw_dtype=raw_dtype)
        types[name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def quantize_nf4(weight: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` -> (packed uint8 ``(ceil(n / 2), 1)``, float32 absmax per block): each value's nearest NF4 code
    after dividing by its block's max |w|, two codes per byte, high nibble first (bitsandbytes' layout)."""
    flat = weight.detach().float().reshape(-1)
    n = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    absmax = padded.abs().amax(dim=1)
    normalised = padded / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    code = torch.tensor(NF4_CODE)
    # Nearest code: the codes are sorted, so count the midpoints below each value (no n x 16 temporary).
    indices = torch.bucketize(normalised.reshape(-1), (code[1:] + code[:-1]) / 2)[:n].to(torch.uint8)
    if n % 2:
        indices = torch.cat([indices, torch.zeros(1, dtype=torch.uint8)])
    packed = (indices[0::2] << 4) | indices[1::2]
    return packed.reshape(-1, 1), absmax


def store_nf4(tensors: dict[str, torch.Tensor], quantize_key, blocksize: int = 64,
              dtype_name: str = "bfloat16") -> dict[str, torch.Tensor]:
    """``tensors`` with every weight for which ``quantize_key(key, tensor)`` is true stored in bitsandbytes' nf4
    layout (no double quantisation, as the official ideogram-4-nf4 files)."""
    stored = {}
    for key, value in tensors.items():
        if not quantize_key(key, value):
            stored[key] = value
            continue
        packed, absmax = quantize_nf4(value, blocksize)
        state = {"quant_type": "nf4", "blocksize": blocksize, "dtype": dtype_name, "shape": list(value.shape)}
        stored[key] = packed
        stored[key + ".absmax"] = absmax
        stored[key + ".quant_map"] = torch.tensor(NF4_CODE, dtype=torch.float32)
        stored[key + ".quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(state).encode()),
                                                                      dtype=torch.uint8)
    return stored


def gguf_dit_types(block_type: str):
    """``type_of`` for :func:`write_gguf` laid out like the published DiT GGUFs (any key prefix): block Linear weights in
    ``block_type``, the other matrices BF16, ``embed_image_indicator`` F16, vectors (norms, biases) F32."""
    def type_of(name: str, tensor: torch.Tensor) -> str:
        if re.search(r"(^|\.)layers\.\d+\.", name) and name.endswith(".weight") and tensor.ndim == 2:
            return block_type
        if name.endswith("embed_image_indicator.weight"):
            return "F16"
        return "BF16" if tensor.ndim == 2 else "F32"
    return type_of
