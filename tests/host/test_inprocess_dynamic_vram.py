"""In-process host tests of the loaders under ComfyUI's dynamic VRAM (run in the host's Python; see comfy_inprocess.py).

ComfyUI >= 0.12 sets ``comfy.memory_management.aimdo_enabled = True`` at start-up on NVIDIA; comfy.ops'
Linear/Embedding are then built without weights (lazy init) and ``state_dict()`` lacks their keys. The pack's
loaders must still load every tiny model, and the loaded models must compute what they compute without it.
Skips on hosts without the flag (0.3.64).
"""

from __future__ import annotations

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)


@pytest.fixture
def dynamic_vram(host, monkeypatch):
    """``aimdo_enabled = True`` for one test (restored afterwards), or a skip on hosts without the flag."""
    try:
        import comfy.memory_management as memory_management
    except ImportError:
        memory_management = None
    if not hasattr(memory_management, "aimdo_enabled"):
        pytest.skip("this host has no dynamic VRAM (comfy.memory_management.aimdo_enabled)")
    monkeypatch.setattr(memory_management, "aimdo_enabled", True)


def test_text_encoder_loads_and_encodes_under_dynamic_vram(host, models, dynamic_vram):
    from ideogram4.text_encoder_checkpoint import load_text_encoder

    nodes = host.nodes
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    (conditioning,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                               prompt="a red wall")
    dtype = next(encoder.loaded.encoder.parameters()).dtype
    oracle = load_text_encoder(models / "text_encoders" / tiny.TEXT_ENCODER_FILE, dtype=dtype,
                               host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    expected, _ = oracle.encode(["a red wall"])
    assert torch.equal(conditioning[0][0].float(), expected.float())


def test_dit_loader_loads_under_dynamic_vram(host, models, dynamic_vram):
    from ideogram4.dit_checkpoint import load_dit_checkpoint

    for weight_dtype in ("default", "fp8"):
        cond, uncond = comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=tiny.COND_FILE,
                                                uncond_model_name=tiny.UNCOND_FILE, weight_dtype=weight_dtype)
        if weight_dtype == "default":
            expected = load_dit_checkpoint(models / "diffusion_models" / tiny.COND_FILE,
                                           dtype=torch.float32).state_dict
            loaded = cond.model.diffusion_model.state_dict()
            for key, value in expected.items():
                assert torch.equal(loaded[key].float(), value.float()), key
        else:
            layer = cond.model.diffusion_model.get_submodule("layers.0.feed_forward.w1")
            assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale is not None


def test_vae_loader_loads_and_decodes_under_dynamic_vram(host, models, dynamic_vram):
    from ideogram4.latent import comfy_latent_to_tokens, decoded_to_image
    from ideogram4.vae import decode_latent_tokens
    from ideogram4.vae_checkpoint import load_vae

    (vae,) = comfy_inprocess.run_node(host.nodes.vae_nodes.VAELoader, vae_name=tiny.VAE_FILE)
    latent = torch.randn((1, 128, 2, 3), generator=torch.Generator().manual_seed(5))
    (image,) = comfy_inprocess.run_node(host.nodes.vae_nodes.VAEDecode, samples={"samples": latent}, vae=vae,
                                        tiled=False)
    core_vae = load_vae(models / "vae" / tiny.VAE_FILE, dtype=torch.float32)
    expected = decoded_to_image(decode_latent_tokens(core_vae, comfy_latent_to_tokens(latent), 2, 3))
    assert torch.equal(image, expected)
