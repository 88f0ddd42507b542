"""De-quantisation of GGML block formats (the tensor types of GGUF files) in PyTorch, on any device.

A GGUF tensor is stored as rows of blocks: each block holds ``elements_per_block`` consecutive weights of one row
in ``bytes_per_block`` bytes (scales as little-endian fp16 plus packed integer codes). :func:`dequantize_gguf`
turns those raw bytes into a float tensor with vectorised tensor operations over all blocks at once, so it runs
per layer and per step on the compute device without numpy.

The results equal the ``gguf`` package's own numpy ``gguf.quants.dequantize`` bit for bit in float32: every
product and sum below is the same float32 operation, in the same order, as in that reference (which follows
ggml's ``dequantize_row_*``), and each is a separate tensor operation so no fused multiply-add changes a rounding.
Other output dtypes are the float32 result rounded once.

Block layouts (``d``/``dmin``: fp16 scales; ``QK_K`` = 256 weights per K-quant super-block):

* ``Q8_0``  (32 w, 34 B): d, 32 x int8.                           w = d * q
* ``Q4_0``  (32 w, 18 B): d, 16 B of nibbles.                     w = d * (q - 8)
* ``Q4_1``  (32 w, 20 B): d, m, 16 B of nibbles.                  w = d * q + m
* ``Q5_0``  (32 w, 22 B): d, 4 B high bits, 16 B of nibbles.      w = d * (q - 16)
* ``Q5_1``  (32 w, 24 B): d, m, 4 B high bits, 16 B of nibbles.   w = d * q + m
  In the 32-weight formats weight ``j < 16`` is the low nibble of byte ``j`` and weight ``16 + j`` its high
  nibble; the 5th bit of weight ``i`` is bit ``i`` of the 32-bit little-endian high-bit word.
* ``Q2_K`` (256 w, 84 B): 16 B of 4-bit scale|min pairs, 64 B of 2-bit codes, d, dmin.
  16 sub-blocks of 16: w = (d * scale) * q - (dmin * min).
* ``Q3_K`` (256 w, 110 B): 32 B high-bit mask, 64 B of 2-bit codes, 12 B of 6-bit signed scales, d.
  16 sub-blocks of 16: w = (d * (scale - 32)) * (q - 4 * (1 - high bit)).
* ``Q4_K`` (256 w, 144 B): d, dmin, 12 B of 6-bit scales and mins, 128 B of nibbles.
  8 sub-blocks of 32: w = (d * scale) * q - (dmin * min).
* ``Q5_K`` (256 w, 176 B): as Q4_K plus 32 B of 5th bits before the nibbles.
* ``Q6_K`` (256 w, 210 B): 128 B of low nibbles, 64 B of 2-bit high parts, 16 x int8 scales, d.
  16 sub-blocks of 16: w = (d * scale) * (q - 32).
* ``F32`` / ``F16`` / ``BF16``: plain little-endian values (one "block" per element).

The bit orders inside the K-quants are spelled out where they are unpacked below. The host is assumed to be
little-endian, as every machine PyTorch runs on is.
"""

from __future__ import annotations

import math

import torch

from .blockwise import dequantize_blockwise

QK_K = 256

# ggml's type numbers (gguf.GGMLQuantizationType); the gguf package is not needed to import the core.
GGUF_QTYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 30: "BF16",
    8: "Q8_0", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
}
_QTYPE_BY_NAME = {name: qtype for qtype, name in GGUF_QTYPE_NAMES.items()}

# (elements per block, bytes per block), as ggml's GGML_QUANT_SIZES.
_BLOCK_LAYOUTS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 30: (1, 2),
    8: (32, 34), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    10: (QK_K, 84), 11: (QK_K, 110), 12: (QK_K, 144), 13: (QK_K, 176), 14: (QK_K, 210),
}

SUPPORTED_GGUF_QTYPES: frozenset[int] = frozenset(GGUF_QTYPE_NAMES)


class GGUFTypeError(ValueError):
    """A GGUF tensor type this module does not de-quantise."""


def _qtype_name(qtype: int) -> str:
    return GGUF_QTYPE_NAMES.get(int(qtype), f"type {int(qtype)}")


def _supported_list() -> str:
    return ", ".join(GGUF_QTYPE_NAMES[q] for q in sorted(SUPPORTED_GGUF_QTYPES, key=lambda q: GGUF_QTYPE_NAMES[q]))


def gguf_block_layout(qtype: int) -> tuple[int, int]:
    """``(elements_per_block, bytes_per_block)`` of a GGML tensor type; :class:`GGUFTypeError` if unsupported."""
    try:
        return _BLOCK_LAYOUTS[int(qtype)]
    except KeyError:
        raise GGUFTypeError(
            f"GGUF tensor type {int(qtype)} ({_foreign_name(qtype)}) is not supported; supported types: "
            f"{_supported_list()}. Use a file quantised to one of those types.") from None


def _foreign_name(qtype: int) -> str:
    """The name ggml gives an unsupported type, when the gguf package is at hand to say it (messages only)."""
    try:
        from gguf import GGMLQuantizationType
        return GGMLQuantizationType(int(qtype)).name
    except Exception:  # the gguf package is absent or does not know the number either
        return "unknown to this module"


# --- reading fields of the blocks (on the blocks' device) ---

def _fp16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte ``offset`` of every block, as float32 of shape (n_blocks, 1)."""
    return blocks[:, offset:offset + 2].contiguous().view(torch.float16).to(torch.float32)


def _split_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., k, m) bytes -> (..., k, 8 // bits, m): field ``s`` of each byte is ``(byte >> (s * bits)) & mask``.

    ggml packs a run of ``m`` consecutive weights into the lowest bits of ``m`` bytes, the next run into the next
    bits of the same bytes, and so on; keeping the field axis before the byte axis restores weight order.
    (One shift per field, then one mask: faster on the CPU than a broadcast shift over short rows.)
    """
    fields = torch.stack([packed >> shift for shift in range(0, 8, bits)], dim=-2)
    return fields.bitwise_and_((1 << bits) - 1)


# --- one function per format: (n_blocks, bytes_per_block) uint8 -> (n_blocks, elements_per_block) float32 ---

def _dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _fp16_field(blocks, 0)
    return torch.mul(blocks[:, 2:].view(torch.int8), d)


def _dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _fp16_field(blocks, 0)
    q = _split_bits(blocks[:, 2:].view(n, 1, 16), 4).view(n, 32)
    return torch.mul(q.view(torch.int8).sub_(8), d)


def _dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, m = _fp16_field(blocks, 0), _fp16_field(blocks, 2)
    q = _split_bits(blocks[:, 4:].view(n, 1, 16), 4).view(n, 32)
    return torch.mul(q, d).add_(m)


def _five_bit_codes(high_word: torch.Tensor, nibbles: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1 codes 0..31: bit ``i`` of the little-endian 32-bit word ``high_word`` (4 bytes) is bit 4 of
    weight ``i``; byte ``b`` holds the bits of weights ``8b .. 8b+7``, lowest bit first."""
    n = nibbles.shape[0]
    low = _split_bits(nibbles.view(n, 1, 16), 4).view(n, 32)
    high = _split_bits(high_word.unsqueeze(-1), 1).view(n, 32)
    return low.bitwise_or_(high.bitwise_left_shift_(4))


def _dequantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _fp16_field(blocks, 0)
    q = _five_bit_codes(blocks[:, 2:6], blocks[:, 6:])
    return torch.mul(q.view(torch.int8).sub_(16), d)


def _dequantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _fp16_field(blocks, 0), _fp16_field(blocks, 2)
    q = _five_bit_codes(blocks[:, 4:8], blocks[:, 8:])
    return torch.mul(q, d).add_(m)


def _dequantize_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales = blocks[:, :16]
    d, dmin = _fp16_field(blocks, 80), _fp16_field(blocks, 82)
    # Sub-block s (16 weights): low nibble of scales[s] scales it, high nibble is its min.
    dl = (d * (scales & 0xF).to(torch.float32)).view(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).view(n, 16, 1)
    # 2-bit codes: two halves of 128 weights, each 32 bytes; field s of byte j is weight 32 s + j of the half.
    q = _split_bits(blocks[:, 16:80].view(n, 2, 32), 2).reshape(n, 16, 16)
    return torch.mul(q, dl).sub_(ml).view(n, QK_K)


def _dequantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, packed_scales = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    d = _fp16_field(blocks, 108)
    # 16 six-bit scales: low 4 bits are the nibbles of bytes 0..7 (low nibbles = scales 0..7, high = 8..15),
    # high 2 bits are the 2-bit fields of bytes 8..11 (field s of byte j = scale 4 s + j).
    low = _split_bits(packed_scales[:, :8].view(n, 1, 8), 4).reshape(n, 16)
    high = _split_bits(packed_scales[:, 8:].view(n, 1, 4), 2).reshape(n, 16)
    scales = (low | (high << 4)).view(torch.int8).sub(32).to(torch.float32)
    dl = (d * scales).view(n, 16, 1)
    # Codes: 2 low bits as in Q2_K; bit s of hmask byte j belongs to weight 32 s + j, and a *clear* bit
    # subtracts 4 (ggml stores the high bit inverted).
    q_low = _split_bits(qs.view(n, 2, 32), 2).reshape(n, 16, 16)
    q_high = _split_bits(hmask.view(n, 1, 32), 1).reshape(n, 16, 16)
    q = q_low.view(torch.int8).sub_(q_high.bitwise_xor_(1).bitwise_left_shift_(2).view(torch.int8))
    return torch.mul(q, dl).view(n, QK_K)


def _k_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (uint8, (n, 8) each).

    Bytes 0..3 hold scales 0..3 in their low 6 bits, bytes 4..7 mins 0..3; scales/mins 4..7 take their low 4 bits
    from the low/high nibbles of bytes 8..11 and their top 2 bits from the top 2 bits of bytes 0..3 / 4..7.
    """
    sc_lo, mn_lo, extra = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([sc_lo & 0x3F, (extra & 0x0F) | ((sc_lo >> 2) & 0x30)], dim=-1)
    mins = torch.cat([mn_lo & 0x3F, (extra >> 4) | ((mn_lo >> 2) & 0x30)], dim=-1)
    return scales, mins


def _k_scale_terms(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K per-sub-block factors ``d * scale`` and ``dmin * min``, float32 (n, 8, 1) each."""
    n = blocks.shape[0]
    d, dmin = _fp16_field(blocks, 0), _fp16_field(blocks, 2)
    scales, mins = _k_scales_and_mins(blocks[:, 4:16])
    return ((d * scales.to(torch.float32)).view(n, 8, 1), (dmin * mins.to(torch.float32)).view(n, 8, 1))


def _dequantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    dl, ml = _k_scale_terms(blocks)
    # Four runs of 32 bytes; low nibbles are sub-block 2 r, high nibbles sub-block 2 r + 1.
    q = _split_bits(blocks[:, 16:].view(n, 4, 32), 4).view(n, 8, 32)
    return torch.mul(q, dl).sub_(ml).view(n, QK_K)


def _dequantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    dl, ml = _k_scale_terms(blocks)
    low = _split_bits(blocks[:, 48:].view(n, 4, 32), 4).view(n, 8, 32)
    # Bit s of high-bit byte j is bit 4 of weight j of sub-block s.
    high = _split_bits(blocks[:, 16:48].view(n, 1, 32), 1).view(n, 8, 32)
    q = low.bitwise_or_(high.bitwise_left_shift_(4))
    return torch.mul(q, dl).sub_(ml).view(n, QK_K)


def _dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    scales = blocks[:, 192:208].view(torch.int8).to(torch.float32)
    d = _fp16_field(blocks, 208)
    dl = (d * scales).view(n, 16, 1)
    # Two halves of 128 weights. Low 4 bits: 64 bytes per half, low nibbles are weights 0..63 of the half, high
    # nibbles 64..127. High 2 bits: 32 bytes per half, field s of byte j is weight 32 s + j of the half.
    low = _split_bits(ql.view(n, 2, 64), 4).view(n, 8, 32)
    high = _split_bits(qh.view(n, 2, 32), 2).view(n, 8, 32)
    q = low.bitwise_or_(high.bitwise_left_shift_(4)).view(torch.int8).sub_(32)
    return torch.mul(q.view(n, 16, 16), dl).view(n, QK_K)


_BLOCK_DEQUANTIZERS = {
    8: _dequantize_q8_0, 2: _dequantize_q4_0, 3: _dequantize_q4_1, 6: _dequantize_q5_0, 7: _dequantize_q5_1,
    10: _dequantize_q2_k, 11: _dequantize_q3_k, 12: _dequantize_q4_k, 13: _dequantize_q5_k, 14: _dequantize_q6_k,
}
# Plain float types: the bytes reinterpreted. Going straight to the output dtype equals going through float32,
# because fp16/bf16 -> float32 is exact.
_PLAIN_DTYPES = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}


def dequantize_gguf(raw: torch.Tensor, qtype: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """De-quantise one GGUF tensor from its stored bytes.

    raw: uint8 tensor of the bytes as stored in the file (any leading shape, e.g. ``(rows, bytes_per_row)`` as
        ``gguf.GGUFReader`` gives them; any device). F32/F16/BF16 tensors are passed as their bytes too.
    qtype: ``gguf.GGMLQuantizationType`` value (a plain int is fine), one of :data:`SUPPORTED_GGUF_QTYPES`.
    shape: the logical shape in PyTorch order, e.g. ``(out_features, in_features)`` (GGUF lists dims reversed).
    dtype: the floating dtype of the result.
    Returns a tensor of ``shape`` and ``dtype`` on ``raw.device``: the float32 de-quantisation, rounded once to
    ``dtype``. When the stored type already is ``dtype`` (F32 as float32, F16 as float16, BF16 as bfloat16) the
    result is ``raw`` reinterpreted, sharing its memory (a memory-mapped file's pages, say): do not write to it.
    """
    qtype = int(qtype)
    elements_per_block, bytes_per_block = gguf_block_layout(qtype)
    name = _qtype_name(qtype)
    shape = tuple(int(s) for s in shape)
    if raw.dtype != torch.uint8:
        raise TypeError(f"dequantize_gguf: expected the raw bytes as a uint8 tensor, got {raw.dtype} "
                        f"(view the data as uint8 first)")
    n_elements = math.prod(shape)
    if shape and shape[-1] % elements_per_block:
        raise ValueError(f"dequantize_gguf: a {name} tensor's rows hold whole blocks of {elements_per_block} "
                         f"values, but shape {shape} has rows of {shape[-1]}")
    expected_bytes = n_elements // elements_per_block * bytes_per_block
    if raw.numel() != expected_bytes:
        raise ValueError(f"dequantize_gguf: a {name} tensor of shape {shape} takes {expected_bytes} bytes "
                         f"({bytes_per_block} per block of {elements_per_block}), got {raw.numel()} "
                         f"(raw shape {tuple(raw.shape)}); the file is truncated or the shape/type do not match")
    flat = raw.reshape(-1)
    if qtype in _PLAIN_DTYPES:
        return flat.view(_PLAIN_DTYPES[qtype]).to(dtype).view(shape)
    blocks = flat.view(-1, bytes_per_block)
    return dequantize_blockwise(blocks, elements_per_block, dtype, _BLOCK_DEQUANTIZERS[qtype]).view(shape)
