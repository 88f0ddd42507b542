"""In-process host tests of the quantised DiT layers (nodes/quantized_ops.py; run in the host's Python, see
comfy_inprocess.py): the per-layer de-quantisation releases its cast on hosts with the offloadable cast API and
gives the official rule's output; a LoRA loaded through ComfyUI on quantised layers gives the velocity of the same
LoRA on the de-quantised float32 weights (fp8 and GGUF Q8_0 files), fully loaded and partially loaded (streamed layers), while the weights
stay quantised, and unpatching leaves the model bit-identical to before.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

FP8_LAYER = "layers.0.feed_forward.w1"
COND_DEQUANTISED_FILE = "ideogram4_tiny_cond_fp8_dequantised_float32.safetensors"
UNCOND_DEQUANTISED_FILE = "ideogram4_tiny_uncond_fp8_dequantised_float32.safetensors"
# Quantised pair -> the same weights de-quantised once by the core (float32 files), per format.
PAIRS = {
    "fp8": ((tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE), (COND_DEQUANTISED_FILE, UNCOND_DEQUANTISED_FILE)),
    "gguf_q8_0": (("ideogram4_tiny_cond-Q8_0.gguf", "ideogram4_tiny_uncond-Q8_0.gguf"),
                  ("ideogram4_tiny_cond_q8_0_dequantised_float32.safetensors",
                   "ideogram4_tiny_uncond_q8_0_dequantised_float32.safetensors")),
}
# Block Linears (fp8 in the fp8 file) and one layer outside the blocks (unquantised in both files).
LORA_LAYERS = ("layers.0.attention.qkv", "layers.0.feed_forward.w2", "layers.1.attention.o",
               "layers.1.adaln_modulation", "input_proj")
GRID_H, GRID_W = 3, 4
# A memory budget under which some patched layers stream and others stay resident (on both hosts).
PARTIAL_LOAD_FRACTION = {"fp8": 0.6, "gguf_q8_0": 0.7}


@pytest.fixture(scope="module")
def add_model_files():
    """A GGUF Q8_0 pair (gguf's writer) and each quantised pair de-quantised once by the core (float32 files): the
    reference the LoRA results are held to."""
    def add(models_dir):
        from safetensors.torch import load_file, save_file

        from ideogram4.dit_checkpoint import load_dit_checkpoint

        folder = models_dir / "diffusion_models"
        try:
            from tools.quantized_weights import gguf_dit_types, write_gguf

            for source, target in zip((tiny.COND_FILE, tiny.UNCOND_FILE), PAIRS["gguf_q8_0"][0]):
                write_gguf(folder / target, load_file(str(folder / source)), gguf_dit_types("Q8_0"), "ideogram4")
        except ImportError:
            pass  # no gguf in this host's Python: the GGUF case skips
        for quantised, dequantised in PAIRS.values():
            for source, target in zip(quantised, dequantised):
                if (folder / source).is_file():
                    save_file(load_dit_checkpoint(folder / source, dtype=torch.float32).state_dict,
                              str(folder / target))
    return add


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


def tiny_lora(dit, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA in the generic diffusers/peft naming ComfyUI reads for any model (``diffusion_model.<layer>.lora_A``
    / ``lora_B``, official layer names) on :data:`LORA_LAYERS`, large enough to move the velocity clearly."""
    generator = torch.Generator().manual_seed(5)
    lora = {}
    for name in LORA_LAYERS:
        layer = dit.get_submodule(name)
        lora[f"diffusion_model.{name}.lora_A.weight"] = torch.randn((rank, layer.in_features), generator=generator)
        lora[f"diffusion_model.{name}.lora_B.weight"] = 0.05 * torch.randn((layer.out_features, rank),
                                                                           generator=generator)
    return lora


def with_lora(patcher, lora):
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
    assert sorted(patched.patches) == sorted(f"diffusion_model.{name}.weight" for name in LORA_LAYERS)
    return patched


def velocity(dit) -> torch.Tensor:
    from ideogram4.velocity import conditional_velocity

    generator = torch.Generator().manual_seed(8)
    tokens = torch.randn((1, GRID_H * GRID_W, 128), generator=generator)
    features = torch.randn((1, 5, tiny.DIT_CONFIG.llm_features_dim), generator=generator)
    return conditional_velocity(dit, tokens, 0.3, features, None, GRID_H, GRID_W, dtype=torch.float32)


def stored_weights(dit) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in dit.state_dict().items()}


def streamed(dit, name) -> bool:
    return hasattr(dit.get_submodule(name), "prev_comfy_cast_weights")


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("load", ["full", "partial"])
def test_lora_on_quantised_layers_gives_the_velocity_of_the_lora_on_the_dequantised_weights(host, models, load,
                                                                                             kind):
    import comfy.model_management

    quantised_files, dequantised_files = PAIRS[kind]
    if not (models / "diffusion_models" / quantised_files[0]).is_file():
        pytest.skip("no gguf package in this host's Python (the pack's requirements.txt installs it)")
    cpu = torch.device("cpu")
    quantised, _ = load_pair(host, *quantised_files, "default")
    reference, _ = load_pair(host, *dequantised_files, "default")
    dit = quantised.model.diffusion_model
    assert dit.get_submodule("layers.0.attention.qkv").quantized.kind == ("fp8_rowwise" if kind == "fp8" else "gguf")
    assert reference.model.diffusion_model.get_submodule("layers.0.attention.qkv").weight.dtype == torch.float32
    before = stored_weights(dit)
    quantised.load(cpu, lowvram_model_memory=0, full_load=True)
    without_lora = velocity(dit)
    quantised.detach()

    lora = tiny_lora(dit)
    reference_patched = with_lora(reference, lora)
    reference_patched.load(cpu, lowvram_model_memory=0, full_load=True)
    expected = velocity(reference_patched.model.diffusion_model)
    reference_patched.detach()

    patched = with_lora(quantised, lora)
    if load == "full":
        patched.load(cpu, lowvram_model_memory=0, full_load=True)
    else:
        patched.load(cpu, lowvram_model_memory=int(patched.model_size() * PARTIAL_LOAD_FRACTION[kind]))
        assert patched.model.model_lowvram
        # Both ComfyUI paths at once: some patched quantised layers streamed (patches in weight_function), some resident
        # (patches ComfyUI would have merged into the weight).
        states = {name: streamed(dit, name) for name in LORA_LAYERS[:4]}
        assert set(states.values()) == {True, False}, states
    got = velocity(dit)
    assert (expected - without_lora).abs().max() > 1e-2  # the LoRA moves the velocity
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for name in LORA_LAYERS[:4]:  # still quantised, same stored bits, while patched
        assert torch.equal(dit.get_submodule(name).weight.view(torch.uint8), before[name + ".weight"].view(torch.uint8))

    patched.detach()
    comfy.model_management.cleanup_models_gc()
    after = stored_weights(dit)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name].view(torch.uint8),
                                                                 tensor.view(torch.uint8)), name
    for name in LORA_LAYERS:
        layer = dit.get_submodule(name)
        assert not hasattr(layer.weight, host.nodes.quantized_ops.PATCH_ATTRIBUTE) and not layer.weight_function
    quantised.load(cpu, lowvram_model_memory=0, full_load=True)
    assert torch.equal(velocity(dit), without_lora)
    quantised.detach()
