"""GGUF de-quantisation in PyTorch against the format's own reference, ``gguf.quants.dequantize`` (numpy).

Every supported type is checked bit for bit in float32 on
* weights quantised by ``gguf.quants.quantize`` (the types it can quantise), and
* random valid blocks: random bytes everywhere, with every fp16 scale field set to a random *finite* fp16
  (normals and subnormals alike), so every code value, sign and scale path occurs (the K-quants have no
  quantiser in the gguf package, so this is their only source).
A tiny file written by ``gguf.GGUFWriter`` and read back memory-mapped by ``gguf.GGUFReader`` pins the byte layout
and the dimension order the module assumes (GGUF lists dims innermost first; PyTorch shapes are the reverse).
"""

import warnings

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is the oracle for these tests (requirements-test.txt)")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402

from ideogram4 import blockwise  # noqa: E402
from ideogram4.gguf_dequant import (  # noqa: E402
    SUPPORTED_GGUF_QTYPES,
    GGUFTypeError,
    dequantize_gguf,
    gguf_block_layout,
)

ALL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QUANTISABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# Byte offsets of the fp16 scale fields inside one block (ggml's block_* structs).
FP16_FIELDS = {
    "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}


def reference(raw: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, QT[name])))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def random_finite_fp16(rng: np.random.Generator, size) -> np.ndarray:
    """Random fp16 bit patterns with the all-ones exponent (inf/NaN) excluded: normals, subnormals, zeros."""
    sign = rng.integers(0, 2, size=size, dtype=np.uint16) << 15
    exponent = rng.integers(0, 31, size=size, dtype=np.uint16) << 10
    mantissa = rng.integers(0, 1 << 10, size=size, dtype=np.uint16)
    return (sign | exponent | mantissa).view(np.float16)


def random_blocks(name: str, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """(rows, blocks_per_row * bytes_per_block) uint8 of random valid blocks."""
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[QT[name]]
    raw = rng.integers(0, 256, size=(rows, blocks_per_row, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[name]:
        raw[..., offset:offset + 2] = random_finite_fp16(rng, (rows, blocks_per_row)).view(np.uint8).reshape(
            rows, blocks_per_row, 2)
    return raw.reshape(rows, blocks_per_row * type_size)


def logical_shape(raw: np.ndarray, name: str) -> tuple[int, ...]:
    return tuple(gguf.quants.quant_shape_from_byte_shape(raw.shape, QT[name]))


def test_layouts_and_type_numbers_match_gguf():
    assert {QT(q).name for q in SUPPORTED_GGUF_QTYPES} == set(ALL_TYPES)
    for name in ALL_TYPES:
        assert gguf_block_layout(QT[name]) == GGML_QUANT_SIZES[QT[name]], name


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_random_blocks_bit_identical_to_gguf(name):
    raw = random_blocks(name, rows=6, blocks_per_row=3, seed=QT[name])
    shape = logical_shape(raw, name)
    ours = dequantize_gguf(torch.from_numpy(raw), QT[name], shape, torch.float32)
    expected = reference(raw, name)
    assert ours.shape == expected.shape == shape and ours.dtype == torch.float32
    assert torch.equal(bits(ours), bits(expected))


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_chunked_cpu_path_bit_identical_to_gguf(name, monkeypatch):
    """Weights larger than one CPU chunk go through the chunk loop (here 3 chunks of 512 weights, the last one
    short) and must give the same bits."""
    monkeypatch.setattr(blockwise, "CPU_CHUNK_ELEMENTS", 512)
    per_block, _ = GGML_QUANT_SIZES[QT[name]]
    raw = random_blocks(name, rows=5, blocks_per_row=256 // per_block, seed=11)
    shape = logical_shape(raw, name)
    for dtype in (torch.float32, torch.bfloat16):
        ours = dequantize_gguf(torch.from_numpy(raw), QT[name], shape, dtype)
        assert torch.equal(ours.float(), reference(raw, name).to(dtype).float()), dtype


def quantised_by_gguf(name: str, shape=(12, 96), seed=0) -> np.ndarray:
    """Weights with a spread of magnitudes (and an all-zero row, whose scale is 0), quantised by gguf."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal(shape) * np.exp(rng.uniform(-8, 4, size=(shape[0], 1)))).astype(np.float32)
    weights[3] = 0.0
    raw = gguf.quants.quantize(weights, QT[name])
    return np.ascontiguousarray(raw).view(np.uint8)


@pytest.mark.parametrize("name", QUANTISABLE)
def test_gguf_quantised_weights_bit_identical_to_gguf(name):
    raw = quantised_by_gguf(name)
    ours = dequantize_gguf(torch.from_numpy(raw), QT[name], (12, 96), torch.float32)
    expected = reference(raw, name).reshape(12, 96)
    assert torch.equal(bits(ours), bits(expected))


def random_plain(name: str, shape, seed: int) -> np.ndarray:
    """Random finite F32/F16/BF16 bit patterns (subnormals and signed zeros included), as bytes."""
    rng = np.random.default_rng(seed)
    if name == "F16":
        return random_finite_fp16(rng, shape).view(np.uint8)
    words = rng.integers(0, 1 << 32, size=shape, dtype=np.uint32)
    words &= ~np.uint32(0x7F800000) | (rng.integers(0, 255, size=shape, dtype=np.uint32) << 23)  # no inf/NaN
    if name == "BF16":
        return (words >> 16).astype(np.uint16).view(np.uint8)
    return words.view(np.uint8)


@pytest.mark.parametrize("name", ("F32", "F16", "BF16"))
def test_plain_types_bit_identical_to_gguf(name):
    raw = random_plain(name, (5, 40), seed=1)
    ours = dequantize_gguf(torch.from_numpy(raw), QT[name], (5, 40), torch.float32)
    width = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[name]
    expected = reference(raw.view(width) if name != "BF16" else raw, name).reshape(5, 40)
    assert torch.equal(bits(ours), bits(expected))


@pytest.mark.parametrize("name", ALL_TYPES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_outputs_are_the_float32_result_rounded_once(name, dtype):
    if name in BLOCK_TYPES:
        raw = random_blocks(name, rows=4, blocks_per_row=2, seed=7)
        shape = logical_shape(raw, name)
    else:
        raw, shape = random_plain(name, (4, 64), seed=7), (4, 64)
    raw_t = torch.from_numpy(raw)
    in_float32 = dequantize_gguf(raw_t, QT[name], shape, torch.float32)
    ours = dequantize_gguf(raw_t, QT[name], shape, dtype)
    assert ours.dtype == dtype and ours.shape == shape
    assert torch.equal(ours.view(torch.int16), in_float32.to(dtype).view(torch.int16))


def test_stored_dtype_is_returned_without_a_copy():
    raw = torch.from_numpy(random_plain("BF16", (3, 8), seed=2))
    ours = dequantize_gguf(raw, QT.BF16, (3, 8), torch.bfloat16)
    assert ours.data_ptr() == raw.data_ptr() and ours.shape == (3, 8)


def test_leading_shape_of_raw_does_not_matter():
    raw = random_blocks("Q4_K", rows=3, blocks_per_row=2, seed=3)
    shape = logical_shape(raw, "Q4_K")
    as_rows = dequantize_gguf(torch.from_numpy(raw), QT.Q4_K, shape, torch.float32)
    flat = dequantize_gguf(torch.from_numpy(raw.reshape(-1)), QT.Q4_K, shape, torch.float32)
    assert torch.equal(bits(as_rows), bits(flat))


def test_unsupported_type_names_the_type_and_the_supported_ones():
    raw = torch.zeros(2 * 34, dtype=torch.uint8)
    with pytest.raises(GGUFTypeError, match=r"IQ2_XXS.*not supported.*Q4_K.*Q8_0"):
        dequantize_gguf(raw, QT.IQ2_XXS, (2, 32), torch.float32)
    with pytest.raises(GGUFTypeError, match="type 999"):
        gguf_block_layout(999)
    assert issubclass(GGUFTypeError, ValueError)


def test_wrong_byte_count_is_refused_with_the_sizes():
    raw = torch.zeros(2 * 34 - 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"Q8_0 tensor of shape \(2, 32\) takes 68 bytes.*got 67"):
        dequantize_gguf(raw, QT.Q8_0, (2, 32), torch.float32)


def test_rows_that_are_not_whole_blocks_are_refused():
    with pytest.raises(ValueError, match="blocks of 256 values.*rows of 128"):
        dequantize_gguf(torch.zeros(144, dtype=torch.uint8), QT.Q4_K, (2, 128), torch.float32)


def test_non_byte_input_is_refused():
    with pytest.raises(TypeError, match="uint8"):
        dequantize_gguf(torch.zeros(4, dtype=torch.float32), QT.F32, (4,), torch.float32)


def raw_bytes_from_reader(tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """What a loader does with a ``GGUFReader`` tensor: its memory-mapped data as bytes, dims reversed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the memory map is read-only; nothing writes to it
        raw = torch.from_numpy(tensor.data).view(torch.uint8)
    return raw, tuple(int(d) for d in reversed(tensor.shape))


def test_tensors_written_by_gguf_writer_read_back_through_gguf_reader(tmp_path):
    rng = np.random.default_rng(5)
    weights = {
        "blk.q8_0.weight": ("Q8_0", rng.standard_normal((6, 64)).astype(np.float32)),
        "blk.q5_1.weight": ("Q5_1", rng.standard_normal((4, 96)).astype(np.float32)),
        "blk.f16.weight": ("F16", rng.standard_normal((3, 5)).astype(np.float32)),
        "blk.bf16.weight": ("BF16", rng.standard_normal((2, 7)).astype(np.float32)),
        "blk.f32.bias": ("F32", rng.standard_normal(9).astype(np.float32)),
    }
    k_quant = random_blocks("Q6_K", rows=3, blocks_per_row=2, seed=9)  # logical (3, 512)

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "tiny")
    for name, (qtype, w) in weights.items():
        stored = gguf.quants.quantize(w, QT[qtype])
        writer.add_tensor(name, stored, raw_dtype=None if qtype in ("F32", "F16") else QT[qtype])
    writer.add_tensor("blk.q6_k.weight", k_quant, raw_dtype=QT.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(str(path))  # memory-mapped
    tensors = {t.name: t for t in reader.tensors}
    for name, (qtype, w) in weights.items():
        t = tensors[name]
        assert t.tensor_type == QT[qtype]
        raw, shape = raw_bytes_from_reader(t)
        assert shape == w.shape, f"{name}: GGUF dims reversed give the PyTorch shape"
        ours = dequantize_gguf(raw, t.tensor_type, shape, torch.float32)
        expected = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, QT[qtype]), QT[qtype]))
        assert torch.equal(bits(ours), bits(expected.reshape(shape))), name
        assert (ours - torch.from_numpy(w)).abs().max() <= 0.2 * np.abs(w).max(), f"{name} approximates w"

    t = tensors["blk.q6_k.weight"]
    raw, shape = raw_bytes_from_reader(t)
    assert shape == (3, 512)
    ours = dequantize_gguf(raw, t.tensor_type, shape, torch.float32)
    assert torch.equal(bits(ours), bits(reference(k_quant, "Q6_K")))
