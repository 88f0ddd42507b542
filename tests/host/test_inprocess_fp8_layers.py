"""In-process host tests of the fp8-stored DiT layers (nodes/fp8_ops.py; run in the host's Python, see
comfy_inprocess.py): the per-layer de-quantisation releases its cast on hosts with the offloadable cast API, and
weight patches (LoRA) on fp8-stored layers are refused with a readable error on every load path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

FP8_LAYER = "layers.0.feed_forward.w1"
LORA_MESSAGE = "LoRA on fp8-stored weights is not supported; set the DiT Loader's weight_dtype to bf16"


def load_pair(host, cond_file, uncond_file, weight_dtype):
    return comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=cond_file,
                                    uncond_model_name=uncond_file, weight_dtype=weight_dtype)


@pytest.fixture(scope="module")
def fp8_pair(host, models):
    return load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "default")


def expected_output(layer, x):
    # The official rule: weight.to(dtype) * scale.to(dtype)[:, None], in the compute dtype (float32 on the CPU).
    weight = layer.weight.to(x.dtype) * layer.weight_scale.to(x.dtype)[:, None]
    return F.linear(x, weight, None if layer.bias is None else layer.bias.to(x.dtype))


def test_fp8_layer_releases_its_offloadable_cast(host, fp8_pair, monkeypatch):
    import comfy.ops

    if not hasattr(comfy.ops, "uncast_bias_weight"):
        pytest.skip("this host has no offloadable cast API (comfy.ops.uncast_bias_weight)")
    casts, uncasts = [], []
    original_cast, original_uncast = comfy.ops.cast_bias_weight, comfy.ops.uncast_bias_weight
    monkeypatch.setattr(comfy.ops, "cast_bias_weight",
                        lambda *a, **k: casts.append(k.get("offloadable", False)) or original_cast(*a, **k))
    monkeypatch.setattr(comfy.ops, "uncast_bias_weight",
                        lambda *a, **k: uncasts.append(a[0]) or original_uncast(*a, **k))
    layer = fp8_pair[0].model.diffusion_model.get_submodule(FP8_LAYER)
    assert layer.weight.dtype == torch.float8_e4m3fn
    x = torch.randn((2, 5, layer.in_features), generator=torch.Generator().manual_seed(0))
    out = layer(x)
    assert casts == [True] and uncasts == [layer]
    assert torch.equal(out, expected_output(layer, x))


def test_fp8_layer_output_is_the_official_dequantisation(host, fp8_pair):
    layer = fp8_pair[0].model.diffusion_model.get_submodule(FP8_LAYER)
    x = torch.randn((1, 3, layer.in_features), generator=torch.Generator().manual_seed(1))
    assert torch.equal(layer(x), expected_output(layer, x))


def test_weight_function_on_an_fp8_layer_is_refused(host, fp8_pair, monkeypatch):
    layer = fp8_pair[0].model.diffusion_model.get_submodule(FP8_LAYER)
    monkeypatch.setattr(layer, "weight_function", [lambda weight: weight], raising=False)
    x = torch.zeros((1, 1, layer.in_features))
    with pytest.raises(ValueError, match=LORA_MESSAGE):
        layer(x)


def tiny_lora_patch(patcher):
    """A clone of ``patcher`` with a diff patch (LoRA-style weight patch) on :data:`FP8_LAYER`."""
    key = f"diffusion_model.{FP8_LAYER}.weight"
    layer = patcher.model.diffusion_model.get_submodule(FP8_LAYER)
    patched = patcher.clone()
    added = patched.add_patches({key: (torch.full(tuple(layer.weight.shape), 0.01),)}, 1.0)
    assert added == [key]
    return patched


def test_lora_patch_on_fp8_layers_is_refused_at_full_load(host, models):
    import comfy.model_management

    cond, _ = load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "default")
    patched = tiny_lora_patch(cond)
    with pytest.raises(ValueError, match=LORA_MESSAGE):
        patched.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    patched.unpatch_model(patched.offload_device)
    comfy.model_management.cleanup_models_gc()


def test_lora_patch_on_unquantised_layers_still_loads(host, models):
    cond, _ = load_pair(host, tiny.COND_FILE, tiny.UNCOND_FILE, "default")
    patched = tiny_lora_patch(cond)
    layer = patched.model.diffusion_model.get_submodule(FP8_LAYER)
    before = layer.weight.detach().clone()
    patched.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    assert torch.allclose(layer.weight, before + 0.01)
    patched.unpatch_model(patched.offload_device)
