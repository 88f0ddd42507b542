"""fp8 de-quantisation against the formulas written out from the spec.

Official per-row (spec B.1, [OFF] Fp8Linear.forward): W = w.to(bf16) * scale.to(bf16)[:, None], the scale
rounded to bf16 before the multiply and the product rounded to bf16.
ComfyUI per-tensor (comfy_kitchen eager dequantize_per_tensor_fp8 with the scale held in float32):
W = w.to(dtype) * scale.float().to(dtype).

Independent oracle used below: the product of two bf16 numbers is exact in float64 (8 + 8 significant bits),
so "multiply in bf16" equals "multiply in float64, round once to bf16".
"""

import json

import pytest
import torch

from ideogram4.quantization import (
    FP8_E4M3_MAX,
    as_row_scale,
    dequantize_fp8_per_tensor,
    dequantize_fp8_rowwise,
    fp8_matmul_linear,
    parse_comfy_quant,
    quantize_fp8_rowwise,
    rowwise_scale_from_per_tensor,
    supports_fp8_matmul,
)
from ideogram4.safetensors_io import CheckpointError


def _official_quantise(weight: torch.Tensor):
    """The official per-row quantiser (spec B.1: scale = rowmax|w| / 448), written out."""
    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
    q = (w / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, scale.squeeze(1)


def _awkward_fp8_weight(rows=64, cols=96):
    """fp8 data covering the range limits: +-448, the largest values below it, subnormals and zeros."""
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(rows, cols, generator=generator) * 120
    values[0, :8] = torch.tensor([448.0, -448.0, 416.0, -416.0, 2.0**-9, -(2.0**-9), 0.0, -0.0])
    values[1] = 448.0 * torch.rand(cols, generator=generator).sign()
    return values.clamp(-448, 448).to(torch.float8_e4m3fn)


def _awkward_scales(rows=64):
    generator = torch.Generator().manual_seed(2)
    # Scales spanning many binades with full fp32 mantissas, as rowmax/448 produces.
    return (torch.rand(rows, generator=generator) + 0.01) * torch.logspace(-8, 2, rows) / 448.0


def test_rowwise_matches_official_formula_bit_for_bit():
    weight, scale = _awkward_fp8_weight(), _awkward_scales()
    result = dequantize_fp8_rowwise(weight, scale)

    expected = weight.to(torch.bfloat16) * scale.to(torch.bfloat16).unsqueeze(1)
    assert result.dtype == torch.bfloat16 and result.shape == weight.shape
    assert torch.equal(result.view(torch.int16), expected.view(torch.int16))

    independent = (weight.double() * scale.to(torch.bfloat16).double()[:, None]).to(torch.bfloat16)
    assert torch.equal(result.view(torch.int16), independent.view(torch.int16))

    # The data discriminates: multiplying in fp32 and rounding once (what xDiT does) gives other bits here.
    fp32_product = (weight.float() * scale.float()[:, None]).to(torch.bfloat16)
    assert not torch.equal(result.view(torch.int16), fp32_product.view(torch.int16))


def test_rowwise_hand_computed_value():
    # 448 * bf16(0.01) = 448 * 0.010009765625 = 4.484375, a tie between the bf16 neighbours 4.46875 and 4.5,
    # rounded to even: 4.5. Multiplying in fp32 first gives 4.48, which rounds to 4.46875 instead.
    weight = torch.tensor([[448.0, -448.0]]).to(torch.float8_e4m3fn)
    result = dequantize_fp8_rowwise(weight, torch.tensor([0.01]))
    assert result.tolist() == [[4.5, -4.5]]
    assert (weight.float() * 0.01).to(torch.bfloat16).tolist() == [[4.46875, -4.46875]]


def test_rowwise_round_trip_of_the_official_quantiser():
    weight = torch.randn(32, 48) * torch.logspace(-3, 1, 32)[:, None]
    q, scale = _official_quantise(weight)
    assert q.float().abs().amax(dim=1).eq(FP8_E4M3_MAX).all()
    result = dequantize_fp8_rowwise(q, scale, torch.float32)
    expected = q.to(torch.float32) * scale.unsqueeze(1)
    assert torch.equal(result, expected)
    assert torch.allclose(result, weight, rtol=0.07, atol=0)


def test_rowwise_shape_errors():
    with pytest.raises(ValueError, match=r"per-row scale of shape \(4,\)"):
        dequantize_fp8_rowwise(torch.zeros(4, 3).to(torch.float8_e4m3fn), torch.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        dequantize_fp8_rowwise(torch.zeros(4).to(torch.float8_e4m3fn), torch.ones(4))


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale_shape", [(), (1,)])
def test_per_tensor_matches_comfyui_semantics(fp8, scale_dtype, scale_shape):
    weight = (torch.randn(40, 24) * 100).clamp(-448, 448).to(fp8)
    scale = torch.tensor(0.0123456789, dtype=scale_dtype).reshape(scale_shape)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        result = dequantize_fp8_per_tensor(weight, scale, dtype)
        expected = weight.to(dtype) * scale.to(torch.float32).to(dtype)
        assert result.dtype == dtype and result.shape == weight.shape
        assert torch.equal(result, expected)
        independent = (weight.double() * scale.to(torch.float32).to(dtype).double()).to(dtype)
        assert torch.equal(result, independent)


def test_per_tensor_as_rowwise_scale_is_bit_identical():
    weight = _awkward_fp8_weight()
    scale = torch.tensor([0.0007123], dtype=torch.float32)
    rows = rowwise_scale_from_per_tensor(scale, weight.shape[0])
    assert rows.dtype == torch.float32 and rows.shape == (weight.shape[0],)
    assert torch.equal(dequantize_fp8_rowwise(weight, rows), dequantize_fp8_per_tensor(weight, scale))


def test_per_tensor_refuses_a_vector_scale():
    with pytest.raises(ValueError, match="single-element scale"):
        dequantize_fp8_per_tensor(torch.zeros(2, 2).to(torch.float8_e4m3fn), torch.ones(2))


def _json_bytes(obj) -> torch.Tensor:
    return torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)


def test_parse_comfy_quant():
    assert parse_comfy_quant(_json_bytes({"format": "float8_e4m3fn"})) == {"format": "float8_e4m3fn"}
    conf = {"format": "int8_tensorwise", "convrot": True}
    assert parse_comfy_quant(_json_bytes(conf)) == conf
    with pytest.raises(CheckpointError, match=r"file.safetensors: x.comfy_quant.*JSON"):
        parse_comfy_quant(torch.tensor([0xFF, 0x00], dtype=torch.uint8), where="file.safetensors: x.comfy_quant")
    with pytest.raises(CheckpointError, match='"format"'):
        parse_comfy_quant(_json_bytes({"layout": "x"}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fp8_matmul_linear_is_the_product_of_the_quantised_operands(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 5, 64), generator=generator).to(dtype)
    weight, bias = torch.randn((48, 64), generator=generator), torch.randn(48, generator=generator).to(dtype)
    weight_fp8, weight_scale = _official_quantise(weight)

    out = fp8_matmul_linear(x, weight_fp8, bias, weight_scale)

    # Each input row scaled by its max |x| / 448 (rounded to the input dtype) and cast to fp8; the exact product of
    # the two de-quantised operands, rounded once to the input dtype; the bias added in that dtype.
    rows = x.reshape(-1, 64)
    row_scale = (rows.abs().amax(dim=1, keepdim=True) / 448.0).to(dtype)
    rows_fp8 = (rows / row_scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    product = (rows_fp8.double() * row_scale.double()) @ (weight_fp8.double() * weight_scale.double()[:, None]).T
    expected = product.to(dtype) + bias
    assert out.shape == (2, 5, 48) and out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -7  # one bf16 ulp of the product, relative
    assert torch.allclose(out.reshape(-1, 48).float(), expected.float(), rtol=tolerance, atol=tolerance)
    # Approximate against the unquantised product: a few per cent, not more.
    exact = rows.double() @ weight.double().T + bias.double()
    assert 0.005 < float((out.reshape(-1, 48).double() - exact).norm() / exact.norm()) < 0.08


def test_fp8_matmul_support_is_tried_on_the_device_not_assumed(monkeypatch):
    from ideogram4 import quantization

    assert supports_fp8_matmul("cpu", torch.float32) and supports_fp8_matmul("cpu", torch.bfloat16)

    def unsupported(*args, **kwargs):
        raise RuntimeError("Rowwise scaling is not currently supported on your device")

    quantization._fp8_matmul_runs.cache_clear()
    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    try:
        assert not supports_fp8_matmul("cpu", torch.bfloat16)
    finally:
        quantization._fp8_matmul_runs.cache_clear()


def test_quantize_fp8_rowwise_is_the_official_quantiser_and_keeps_zero_rows():
    weight = torch.randn((6, 40), generator=torch.Generator().manual_seed(3)) * 0.05
    weight[2] = 0.0
    quantised, scale = quantize_fp8_rowwise(weight)
    expected_q, expected_scale = _official_quantise(weight)
    nonzero = torch.tensor([row != 2 for row in range(6)])
    assert torch.equal(quantised[nonzero].view(torch.uint8), expected_q[nonzero].view(torch.uint8))
    assert torch.equal(scale[nonzero], expected_scale[nonzero])
    assert scale[2] == 1.0 and not quantised[2].float().any()  # a zero row: scale 1, not a division by zero


def test_as_row_scale_expands_a_per_tensor_scale_and_keeps_a_per_row_one():
    assert torch.equal(as_row_scale(torch.tensor(0.25), 3), torch.tensor([0.25, 0.25, 0.25]))
    per_row = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    result = as_row_scale(per_row, 2)
    assert result.dtype == torch.float32 and torch.equal(result, torch.tensor([1.0, 2.0]))
