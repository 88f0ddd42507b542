"""In-process host tests of how the pack's models sit in ComfyUI's model management (run in the host's Python;
see comfy_inprocess.py).

* A partial load (``ModelPatcher.load`` with less memory than the model needs) streams the layers that did not
  fit through comfy.ops casting; the output stays bit-identical to the fully loaded model.
* The weight-dtype choices of the DiT loader: fp8 files stay fp8 and give exactly the one-time de-quantisation's
  output, bf16 computes in bf16, fp8 quantises unquantised files, fp8_fast multiplies in fp8.
* Each model has its own patcher on the devices ComfyUI assigns to that kind of model.
* The text encoder keeps scaled fp8 weights in fp8 and gives the features of the one-time de-quantisation.
* Loading consumes the converted state dict layer by layer, so a converted copy of the model never exists whole
  beside the model.
"""

from __future__ import annotations

import weakref

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

GRID_H, GRID_W = 3, 4
TIME = 0.3
TEXT_ENCODER_FP8_FILE = "qwen3vl_tiny_fp8_scaled.safetensors"
PROMPT = '{"high_level_description":"a red kite over a green hill"}'


@pytest.fixture(scope="module")
def add_model_files():
    """A Comfy-Org-layout fp8 text encoder (per-tensor scaled fp8 decoder Linears) beside the float32 one."""
    def add(models_dir):
        from safetensors.torch import save_file

        from tools.make_tiny_weights import text_encoder_state_dict

        save_file(text_encoder_state_dict(seed=3), str(models_dir / "text_encoders" / TEXT_ENCODER_FP8_FILE))
    return add


def load_pair(host, cond_file, uncond_file, weight_dtype):
    return comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=cond_file,
                                    uncond_model_name=uncond_file, weight_dtype=weight_dtype)


def inputs():
    generator = torch.Generator().manual_seed(8)
    tokens = torch.randn((1, GRID_H * GRID_W, 128), generator=generator)
    features = torch.randn((1, 5, tiny.DIT_CONFIG.llm_features_dim), generator=generator)
    return tokens, features


def velocity(dit, dtype=torch.float32) -> torch.Tensor:
    from ideogram4.velocity import conditional_velocity

    tokens, features = inputs()
    return conditional_velocity(dit, tokens, TIME, features, None, GRID_H, GRID_W, dtype=dtype)


def core_dit(path, dtype):
    from ideogram4.dit import Ideogram4DiT
    from ideogram4.dit_checkpoint import load_dit_checkpoint

    checkpoint = load_dit_checkpoint(path, dtype=dtype)
    dit = Ideogram4DiT(checkpoint.config, dtype=dtype)
    dit.load_state_dict(checkpoint.state_dict, strict=True)
    return dit.eval()


def streamed_layers(dit) -> tuple[int, int]:
    """(layers left on the offload device and streamed per call, layers loaded whole) among comfy.ops layers;
    ComfyUI marks the streamed ones by saving their previous cast flag in ``prev_comfy_cast_weights``."""
    flags = [hasattr(m, "prev_comfy_cast_weights") for m in dit.modules() if hasattr(m, "comfy_cast_weights")]
    return sum(flags), len(flags) - sum(flags)


@pytest.mark.parametrize("cond_file, weight_dtype", [(tiny.COND_FILE, "default"), (tiny.COND_FP8_FILE, "default")])
def test_partial_load_streams_some_layers_and_keeps_the_output_identical(host, models, cond_file, weight_dtype):
    cond, _ = load_pair(host, cond_file, tiny.UNCOND_FILE if cond_file == tiny.COND_FILE else tiny.UNCOND_FP8_FILE,
                        weight_dtype)
    fully_loaded, partially_loaded, (streamed, resident) = full_and_partial_load(cond, velocity)
    assert streamed > 0 and resident > 0
    assert torch.equal(partially_loaded, fully_loaded)


def full_and_partial_load(patcher, run, fraction: float = 0.4):
    """(``run(dit)`` fully loaded, ``run(dit)`` loaded with ``fraction`` of the model's size, (streamed layers,
    resident layers) of that partial load) for ``patcher``'s DiT on the CPU; detached afterwards."""
    import comfy.model_management

    dit = patcher.model.diffusion_model
    cpu = torch.device("cpu")
    patcher.load(cpu, lowvram_model_memory=0, full_load=True)
    fully_loaded = run(dit)
    patcher.detach()
    patcher.load(cpu, lowvram_model_memory=int(patcher.model_size() * fraction))
    assert patcher.model.model_lowvram
    layers = streamed_layers(dit)
    partially_loaded = run(dit)
    patcher.detach()
    comfy.model_management.cleanup_models_gc()
    return fully_loaded, partially_loaded, layers


def test_default_keeps_fp8_weights_and_matches_the_one_time_dequantisation(host, models):
    cond, _ = load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "default")
    dit = cond.model.diffusion_model
    assert dit.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    assert dit.layers[0].attention.qkv.weight_scale.dtype == torch.float32
    # On the CPU the compute dtype is float32: de-quantising per call must equal de-quantising once at load.
    oracle = core_dit(models / "diffusion_models" / tiny.COND_FP8_FILE, torch.float32)
    assert torch.equal(velocity(dit), velocity(oracle))


def test_bf16_weights_compute_in_bf16_like_the_official_pipeline(host, models):
    nodes = host.nodes
    cond, _ = load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "bf16")
    dit = cond.model.diffusion_model
    assert dit.layers[0].attention.qkv.weight.dtype == torch.bfloat16
    assert nodes.compat.inference_dtype(cond.model) == torch.bfloat16
    oracle = core_dit(models / "diffusion_models" / tiny.COND_FP8_FILE, torch.bfloat16)
    assert torch.equal(velocity(dit, torch.bfloat16), velocity(oracle, torch.bfloat16))


def test_fp8_choice_quantises_an_unquantised_file(host, models):
    cond, _ = load_pair(host, tiny.COND_FILE, tiny.UNCOND_FILE, "fp8")
    dit = cond.model.diffusion_model
    assert dit.layers[1].feed_forward.w2.weight.dtype == torch.float8_e4m3fn
    assert dit.input_proj.weight.dtype == torch.float32  # only the blocks are quantised
    exact = velocity(core_dit(models / "diffusion_models" / tiny.COND_FILE, torch.float32))
    quantised = velocity(dit)
    relative = (quantised - exact).norm() / exact.norm()
    assert 0 < relative < 0.1


def test_text_encoder_keeps_fp8_weights_and_gives_the_features_of_the_one_time_dequantisation(host, models):
    from ideogram4.text_encoder_checkpoint import load_text_encoder

    nodes = host.nodes
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=TEXT_ENCODER_FP8_FILE)
    q_proj = encoder.loaded.encoder.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.float8_e4m3fn and q_proj.weight_scale.dtype == torch.float32
    assert encoder.loaded.encoder.embed_tokens.weight.dtype == torch.float32  # stored bf16: cast, not quantised
    path = models / "text_encoders" / TEXT_ENCODER_FP8_FILE
    dequantised_at_load = load_text_encoder(path, dtype=torch.float32,
                                            host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    assert dequantised_at_load.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert torch.equal(encoder.encode(PROMPT), dequantised_at_load.encode([PROMPT])[0])


def test_text_encoder_fp8_layers_in_bf16_match_the_official_dequantisation_bit_for_bit(host, models):
    from ideogram4.text_encoder_checkpoint import load_text_encoder

    fp8_ops = host.nodes.quantized_ops
    path = models / "text_encoders" / TEXT_ENCODER_FP8_FILE
    kept = load_text_encoder(path, dtype=torch.bfloat16, operations=fp8_ops.Ideogram4QuantizedOps,
                             keep_quantized_with=fp8_ops.make_quantized_layer,
                             host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    assert kept.encoder.layers[35].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    dequantised_at_load = load_text_encoder(path, dtype=torch.bfloat16,
                                            host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    assert torch.equal(kept.encode([PROMPT])[0], dequantised_at_load.encode([PROMPT])[0])


def test_loading_releases_each_tensor_once_its_layer_holds_it(host):
    from ideogram4.dit import Ideogram4DiT

    nodes = host.nodes
    state = {key: value.clone() for key, value in tiny.dit_state_dict(seed=5).items()}  # owned only by `state`
    expected = {key: value.clone() for key, value in state.items()}
    alive = {key: weakref.ref(value) for key, value in state.items()}
    dit = Ideogram4DiT(tiny.DIT_CONFIG)
    last_layer = list(state)[-1].rpartition(".")[0]  # layers load in the state dict's order
    last_layer_keys = sorted(key for key in state if key.rpartition(".")[0] == last_layer)
    still_alive_when_last_layer_loads = []

    def count_alive(*unused):
        still_alive_when_last_layer_loads.append(sorted(key for key, ref in alive.items() if ref() is not None))

    dit.get_submodule(last_layer)._register_load_state_dict_pre_hook(count_alive)
    patcher = nodes.compat.new_patcher(dit, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    keys = list(state)
    nodes.compat.load_weights(patcher, dit, state)

    assert state == {}
    # Only the last layer's own tensors (being loaded) remain; every earlier one was dropped after its copy.
    assert still_alive_when_last_layer_loads == [last_layer_keys]
    assert all(torch.equal(dit.state_dict()[key], expected[key]) for key in keys)


@pytest.mark.parametrize("change, message", [
    ({"input_proj.weight": None}, r"the weights of input_proj do not fit: missing \['weight'\]"),
    ({"layers.1.feed_forward.w2.weight": None}, r"missing \['layers\.1\.feed_forward\.w2\.weight'\]"),
    ({"layers.1.feed_forward.gate.weight": torch.zeros(1)}, r"unexpected \['layers\.1\.feed_forward\.gate\.weight'\]"),
    ({"layers.1.feed_forward.w2.extra": torch.zeros(1)}, r"feed_forward\.w2 do not fit: missing \[\], unexpected \['extra'\]"),
])
def test_loading_names_the_keys_that_do_not_fit(host, change, message):
    from ideogram4.dit import Ideogram4DiT

    compat = host.nodes.compat
    dit = Ideogram4DiT(tiny.DIT_CONFIG)
    patcher = compat.new_patcher(dit, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    state = tiny.dit_state_dict(seed=5)
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(ValueError, match=message):
        compat.load_weights(patcher, dit, state)


def test_fp8_fast_multiplies_block_linears_in_fp8_close_to_the_weight_only_fp8(host, models):
    fast, _ = load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "fp8_fast")
    weight_only, _ = load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "default")
    dit = fast.model.diffusion_model
    assert dit.layers[0].attention.qkv.fp8_compute and dit.layers[1].feed_forward.w2.fp8_compute
    assert not getattr(dit.input_proj, "fp8_compute", False)  # only the blocks' token Linears multiply in fp8
    assert not getattr(dit.layers[0].adaln_modulation, "fp8_compute", False)
    assert dit.layers[0].adaln_modulation.weight.dtype == torch.float8_e4m3fn  # stored fp8, de-quantised per call
    reference = velocity(weight_only.model.diffusion_model)
    relative = float((velocity(dit) - reference).norm() / reference.norm())
    assert 0 < relative < 0.1  # approximate: the activations are quantised too


def test_fp8_fast_falls_back_to_fp8_with_a_warning_where_fp8_products_do_not_run(host, models, monkeypatch, caplog):
    monkeypatch.setattr(host.nodes.dit_loader, "supports_fp8_matmul", lambda device, dtype: False)
    with caplog.at_level("WARNING"):
        fast, _ = load_pair(host, tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "fp8_fast")
    assert "fp8_fast needs row-wise scaled fp8 matrix multiplies" in caplog.text
    dit = fast.model.diffusion_model
    assert not any(getattr(module, "fp8_compute", False) for module in dit.modules())
    assert dit.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn  # still stored as fp8


def test_each_model_has_its_own_patcher_on_the_devices_comfy_assigns(host, models):
    import comfy.model_management as mm

    nodes = host.nodes
    cond, uncond = load_pair(host, tiny.COND_FILE, tiny.UNCOND_FILE, "default")
    assert cond is not uncond and cond.model is not uncond.model
    assert isinstance(cond.model, nodes.model_wrapper.Ideogram4Model)
    assert (cond.load_device, cond.offload_device) == (mm.get_torch_device(), mm.unet_offload_device())
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    assert (encoder.patcher.load_device, encoder.patcher.offload_device) == (
        mm.text_encoder_device(), mm.text_encoder_offload_device())
    (vae,) = comfy_inprocess.run_node(nodes.vae_nodes.VAELoader, vae_name=tiny.VAE_FILE)
    assert (vae.patcher.load_device, vae.patcher.offload_device) == (mm.vae_device(), mm.vae_offload_device())
    # Loading goes through ComfyUI's model management, which then tracks the models.
    mm.load_models_gpu([cond, uncond])
    loaded = [entry.model for entry in mm.current_loaded_models]
    assert cond in loaded and uncond in loaded


def test_model_sampling_starts_from_pure_noise_and_keeps_the_last_latent(host, models):
    cond, _ = load_pair(host, tiny.COND_FILE, tiny.UNCOND_FILE, "default")
    sampling = cond.get_model_object("model_sampling")
    assert isinstance(sampling, host.nodes.model_wrapper.Ideogram4ModelSampling)
    noise, image = torch.randn(1, 128, 2, 2), torch.randn(1, 128, 2, 2)
    first_sigma = torch.tensor(1.0 - 1.2339458e-4)
    assert torch.equal(sampling.noise_scaling(first_sigma, noise, image), noise)
    sigma = torch.tensor(0.6)
    assert torch.equal(sampling.noise_scaling(sigma, noise, image), sigma * noise + (1.0 - sigma) * image)
    assert torch.equal(sampling.inverse_noise_scaling(torch.tensor(5.5e-4), image), image)
    assert float(sampling.timestep(torch.tensor(0.25))) == 0.25  # multiplier 1: the model sees sigma itself
