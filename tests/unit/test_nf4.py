"""NF4 de-quantisation without bitsandbytes, against a hand-worked example and against bitsandbytes itself.

The hand-worked example needs nothing but the published NF4 table (QLoRA appendix E); the bitsandbytes
comparisons run where bitsandbytes imports and runs on this CPU (it is in requirements-test.txt) and are skipped
with a message otherwise.
"""

import json
import warnings

import pytest
import torch

from ideogram4 import blockwise
from ideogram4.nf4 import NF4_CODE, dequantize_nf4, parse_bnb_quant_state


def bnb_functional():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes.functional as functional
        functional.quantize_4bit(torch.zeros(64), blocksize=64, quant_type="nf4")
    except Exception as error:  # not installed, or no backend for this CPU
        pytest.skip(f"bitsandbytes does not run here ({type(error).__name__}: {error}); the hand-worked NF4 "
                    f"example still checks the maths")
    return functional


def test_hand_worked_example():
    # Two blocks of 4 (shape (2, 4), blocksize 4), absmax 2.0 and 0.5. Each byte holds two codes, high nibble
    # first; the values are NF4_CODE[code] from the published table:
    #   0x7F -> codes 7, 15 -> 0.0, 1.0                     (x 2.0)  -> 0.0, 2.0
    #   0x08 -> codes 0, 8  -> -1.0, 0.07958029955625534     (x 2.0)  -> -2.0, 0.15916059911251068
    #   0x3C -> codes 3, 12 -> -0.39491748809814453, 0.44070982933044434  (x 0.5) -> -0.19745874404907227,
    #                                                                                 0.22035491466522217
    #   0xA5 -> codes 10, 5 -> 0.24611230194568634, -0.18477343022823334  (x 0.5) -> 0.12305615097284317,
    #                                                                                 -0.09238671711411667
    # Scaling by a power of two is exact in float32, so these products are the exact expected float32 values.
    packed = torch.tensor([0x7F, 0x08, 0x3C, 0xA5], dtype=torch.uint8)
    absmax = torch.tensor([2.0, 0.5])
    expected = torch.tensor([[0.0, 2.0, -2.0, 0.15916059911251068],
                             [-0.19745874404907227, 0.22035491466522217, 0.12305615097284317,
                              -0.09238671711411667]], dtype=torch.float32)
    ours = dequantize_nf4(packed, absmax, (2, 4), torch.float32, blocksize=4)
    assert torch.equal(ours, expected)
    assert torch.equal(dequantize_nf4(packed, absmax, (2, 4), torch.bfloat16, blocksize=4), expected.bfloat16())


def test_code_table_follows_its_definition():
    # NF4 definition (bitsandbytes create_normal_map, QLoRA): normal quantiles at float32 linspace points,
    # normalised by the largest. torch.special.ndtri is the standard normal quantile function.
    offset = 0.9677083
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())
    levels = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)]).sort().values
    levels = levels / levels.max()
    assert len(NF4_CODE) == 16 and NF4_CODE[7] == 0.0 and NF4_CODE[0] == -1.0 and NF4_CODE[15] == 1.0
    assert torch.allclose(torch.tensor(NF4_CODE, dtype=torch.float64), levels, rtol=0, atol=1e-6)


def test_quant_map_from_the_file_is_used():
    packed = torch.tensor([0x01, 0xF0], dtype=torch.uint8)
    quant_map = torch.arange(16, dtype=torch.float32)  # code i means i
    ours = dequantize_nf4(packed, torch.tensor([3.0]), (4,), torch.float32, blocksize=4, quant_map=quant_map)
    assert ours.tolist() == [0.0, 3.0, 45.0, 0.0]


@pytest.mark.parametrize("shape,blocksize", [((8, 192), 64), ((6, 256), 128), ((3, 50), 64), ((5, 7), 64)])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_equals_bitsandbytes_dequantize_4bit(shape, blocksize, dtype):
    functional = bnb_functional()
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(shape[0] * blocksize)).to(dtype)
    packed, state = functional.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4",
                                             compress_statistics=False)
    expected = functional.dequantize_4bit(packed, state)
    ours = dequantize_nf4(packed, state.absmax, shape, dtype, blocksize=blocksize, quant_map=state.code)
    assert ours.dtype == expected.dtype == dtype and ours.shape == expected.shape
    assert torch.equal(ours.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8))
    # And with the built-in table instead of the state's code.
    assert torch.equal(dequantize_nf4(packed, state.absmax, shape, dtype, blocksize=blocksize), ours)


def test_chunked_cpu_path_equals_bitsandbytes(monkeypatch):
    """A weight larger than one CPU chunk (here 5 chunks of 2 blocks) goes through the chunk loop."""
    functional = bnb_functional()
    monkeypatch.setattr(blockwise, "CPU_CHUNK_ELEMENTS", 128)
    weight = torch.randn((10, 64), generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    packed, state = functional.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = dequantize_nf4(packed, state.absmax, (10, 64), torch.bfloat16, quant_map=state.code)
    assert torch.equal(ours.view(torch.int16), functional.dequantize_4bit(packed, state).view(torch.int16))


def test_linear4bit_state_dict_saved_and_read_back(tmp_path):
    """The sidecar keys and shapes of a saved bitsandbytes Linear4bit (the official nf4 layout), read back."""
    bnb_functional()
    import bitsandbytes as bnb
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    plain = torch.nn.Linear(128, 6).to(torch.bfloat16)
    layer = bnb.nn.Linear4bit(128, 6, compute_dtype=torch.bfloat16, compress_statistics=False, quant_type="nf4",
                              device="meta")
    layer.weight = bnb.nn.Params4bit(plain.weight.data, requires_grad=False, compress_statistics=False,
                                     quant_type="nf4")
    layer.bias = torch.nn.Parameter(plain.bias.data, requires_grad=False)
    layer = layer.to("cpu")  # quantises the bf16 weight, as the official nf4 files were made
    save_file(layer.state_dict(), str(tmp_path / "nf4.safetensors"))

    stored = load_file(str(tmp_path / "nf4.safetensors"))
    state = parse_bnb_quant_state(stored["weight.quant_state.bitsandbytes__nf4"])
    assert state == {"quant_type": "nf4", "blocksize": 64, "dtype": torch.bfloat16, "shape": (6, 128)}
    assert stored["weight"].shape == (384, 1) and stored["weight.absmax"].dtype == torch.float32
    ours = dequantize_nf4(stored["weight"], stored["weight.absmax"], state["shape"], state["dtype"],
                          blocksize=state["blocksize"], quant_map=stored["weight.quant_map"])
    expected = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert torch.equal(ours.view(torch.int16), expected.view(torch.int16))
    assert (ours.float() - plain.weight.float()).abs().max() < 0.2 * plain.weight.float().abs().max()


def blob(state: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(state).encode("utf-8")), dtype=torch.uint8)


def test_parse_quant_state():
    parsed = parse_bnb_quant_state(blob({"quant_type": "nf4", "blocksize": 64, "dtype": "float16",
                                         "shape": [12, 34]}))
    assert parsed == {"quant_type": "nf4", "blocksize": 64, "dtype": torch.float16, "shape": (12, 34)}


@pytest.mark.parametrize("state,message", [
    ({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [8, 128], "nested_blocksize": 256,
      "nested_dtype": "float32", "nested_offset": 0.1}, "double-quantised.*nested_blocksize.*compress_statistics"),
    ({"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [8, 128]}, "'fp4' is not read"),
    ({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16"}, "missing shape"),
    ({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [2]}, "dtype 'int8'"),
    ({"quant_type": "nf4", "blocksize": 0, "dtype": "float32", "shape": [2]}, "blocksize must be a positive"),
])
def test_parse_quant_state_refuses(state, message):
    with pytest.raises(ValueError, match=message):
        parse_bnb_quant_state(blob(state))


def test_parse_quant_state_refuses_non_json():
    with pytest.raises(ValueError, match="not the JSON bitsandbytes writes"):
        parse_bnb_quant_state(torch.tensor([0xFF, 0x00, 0x7B], dtype=torch.uint8))


def test_wrong_sizes_are_refused():
    packed = torch.zeros(64, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"shape \(2, 64\) packs into 64 bytes.*got 63"):
        dequantize_nf4(packed[:63], torch.ones(2), (2, 64), torch.float32)
    with pytest.raises(ValueError, match="needs 2 absmax values, got 4"):
        dequantize_nf4(packed, torch.ones(4), (2, 64), torch.float32)
    with pytest.raises(ValueError, match="16 code values"):
        dequantize_nf4(packed, torch.ones(2), (2, 64), torch.float32, quant_map=torch.ones(256))
    with pytest.raises(TypeError, match="uint8"):
        dequantize_nf4(packed.float(), torch.ones(2), (2, 64), torch.float32)
