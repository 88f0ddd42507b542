"""In-process host tests of the errors the nodes raise (run in the host's Python; see comfy_inprocess.py).

ComfyUI shows an exception's message as the node error, so each must name what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from safetensors.torch import save_file

import comfy_inprocess
from comfy_inprocess import sampler_inputs

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)


def add_misplaced_and_broken_files(models_dir):
    """Files in the wrong folder, a file that is not safetensors at all, and a DiT with another layer count."""
    shutil.copy(models_dir / "vae" / tiny.VAE_FILE, models_dir / "diffusion_models" / "actually_a_vae.safetensors")
    shutil.copy(models_dir / "diffusion_models" / tiny.COND_FILE, models_dir / "text_encoders" / "actually_a_dit.safetensors")
    shutil.copy(models_dir / "text_encoders" / tiny.TEXT_ENCODER_FILE, models_dir / "vae" / "actually_a_te.safetensors")
    (models_dir / "diffusion_models" / "broken.safetensors").write_bytes(b"<html>404 not found</html>")
    three_layers = dataclasses.replace(tiny.DIT_CONFIG, num_layers=3)
    save_file(tiny.dit_state_dict(seed=3, config=three_layers), str(models_dir / "diffusion_models" / "other_dit.safetensors"))


@pytest.fixture(scope="module")
def add_model_files():
    return add_misplaced_and_broken_files


def test_missing_model_file_names_the_file_and_folder(host, models):
    with pytest.raises(FileNotFoundError, match="no_such_model.safetensors"):
        comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name="no_such_model.safetensors",
                                 uncond_model_name=tiny.UNCOND_FILE, weight_dtype="default")


def test_dit_loader_refuses_a_vae_file(host, models):
    with pytest.raises(ValueError, match=r"actually_a_vae\.safetensors.*VAE"):
        comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name="actually_a_vae.safetensors",
                                 uncond_model_name=tiny.UNCOND_FILE, weight_dtype="default")


def test_dit_loader_refuses_a_file_that_is_not_safetensors(host, models):
    with pytest.raises(ValueError, match=r"broken\.safetensors"):
        comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name="broken.safetensors",
                                 uncond_model_name=tiny.UNCOND_FILE, weight_dtype="default")


def test_dit_loader_refuses_a_cond_uncond_pair_of_different_models(host, models):
    expected = r"other_dit\.safetensors do not match: first differing tensor 'layers\.2\..*absent vs"
    with pytest.raises(ValueError, match=expected):
        comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=tiny.COND_FILE,
                                 uncond_model_name="other_dit.safetensors", weight_dtype="default")


def test_text_encoder_loader_refuses_a_dit_file(host, models):
    with pytest.raises(ValueError, match=r"actually_a_dit\.safetensors.*not a Qwen3-VL text encoder"):
        comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncoderLoader,
                                 text_encoder_name="actually_a_dit.safetensors")


def test_vae_loader_refuses_a_text_encoder_file(host, models):
    with pytest.raises(ValueError, match=r"actually_a_te\.safetensors.*text encoder"):
        comfy_inprocess.run_node(host.nodes.vae_nodes.VAELoader, vae_name="actually_a_te.safetensors")


@pytest.mark.parametrize("node", ["sampler", "scheduler", "empty_latent"])
def test_a_size_that_is_not_a_multiple_of_16_is_a_readable_error(host, pack_models, node):
    nodes = host.nodes
    with pytest.raises(ValueError, match=r"width must be a positive multiple of 16 pixels.*got 100; use 96"):
        if node == "sampler":
            comfy_inprocess.run_node(nodes.sampler_node.Sampler, **sampler_inputs(pack_models, width=100))
        elif node == "scheduler":
            comfy_inprocess.run_node(nodes.scheduler_guider.Scheduler, preset="Default 20", steps=20, mu=0.0, std=1.75,
                                     width=100, height=64, denoise=1.0)
        else:
            comfy_inprocess.run_node(nodes.noise_latent.EmptyLatent, width=100, height=64, batch_size=1)


def test_malformed_guidance_schedule_says_what_form_is_expected(host, pack_models):
    from ideogram4.guidance import GuidanceScheduleError

    nodes = host.nodes
    with pytest.raises(GuidanceScheduleError, match=r"'7,seven'.*Expected one of"):
        comfy_inprocess.run_node(nodes.sampler_node.Sampler, **sampler_inputs(pack_models, guidance_schedule="7,seven"))
    cond, uncond, conditioning = pack_models
    with pytest.raises(GuidanceScheduleError, match="expects 2 values, got 3"):
        comfy_inprocess.run_node(nodes.scheduler_guider.Guider, cond_model=cond, uncond_model=uncond,
                                 conditioning=conditioning, preset="Custom", steps=2, guidance_schedule="7,7,3")


def test_presets_ignore_the_custom_guidance_string(host, pack_models):
    (latent,) = comfy_inprocess.run_node(host.nodes.sampler_node.Sampler,
                                         **sampler_inputs(pack_models, preset="Turbo 12", guidance_schedule="nonsense"))
    assert latent["samples"].shape == (1, 128, 2, 2)


def test_denoise_below_one_needs_a_latent(host, pack_models):
    with pytest.raises(ValueError, match="denoise below 1 needs an input latent"):
        comfy_inprocess.run_node(host.nodes.sampler_node.Sampler, **sampler_inputs(pack_models, denoise=0.5))


def test_guider_refuses_sigmas_longer_than_its_guidance_list(host, pack_models):
    import torch

    cond, uncond, conditioning = pack_models
    (guider,) = comfy_inprocess.run_node(host.nodes.scheduler_guider.Guider, cond_model=cond, uncond_model=uncond,
                                         conditioning=conditioning, preset="Custom", steps=2, guidance_schedule="7,3")
    options = {"transformer_options": {"sample_sigmas": torch.tensor([0.9, 0.6, 0.3, 0.1])}}
    with pytest.raises(ValueError, match="SIGMAS have 3 steps but the guidance schedule has 2 entries"):
        guider.guidance_for(torch.tensor([0.9]), options)


def test_sampler_and_guider_need_text_conditioning(host, pack_models):
    nodes = host.nodes
    with pytest.raises(ValueError, match="holds no text features"):
        comfy_inprocess.run_node(nodes.sampler_node.Sampler, **sampler_inputs(pack_models, conditioning=[[None, {}]]))
    cond, uncond, _ = pack_models
    with pytest.raises(ValueError, match="holds no text features"):
        comfy_inprocess.run_node(nodes.scheduler_guider.Guider, cond_model=cond, uncond_model=uncond,
                                 conditioning=[[None, {}]], preset="Default 20", steps=20, guidance_schedule="7")


def test_guider_refuses_full_denoise_sigmas_of_another_preset(host, pack_models):
    """Quality 48's Guider fed Turbo 12's full SIGMAS must not silently use the last 12 of its 48 entries."""
    cond, uncond, conditioning = pack_models
    nodes = host.nodes
    (guider,) = comfy_inprocess.run_node(nodes.scheduler_guider.Guider, cond_model=cond, uncond_model=uncond,
                                         conditioning=conditioning, preset="Quality 48", steps=48,
                                         guidance_schedule="7")
    (sigmas,) = comfy_inprocess.run_node(nodes.scheduler_guider.Scheduler, preset="Turbo 12", steps=12, mu=0.5,
                                         std=1.75, width=32, height=32, denoise=1.0)
    options = {"transformer_options": {"sample_sigmas": sigmas.float()}}
    expected = r"SIGMAS have 12 steps \(a full denoise\) but the guidance schedule has 48 entries.*Scheduler gives 12"
    with pytest.raises(ValueError, match=expected):
        guider.guidance_for(sigmas[:1].float(), options)
    with pytest.raises(ValueError, match=expected):  # refused before sampling starts, too
        guider.sample(None, None, None, sigmas)
    # A partial denoise of the same length (the img2img tail) still uses the guidance list's last entries.
    (tail,) = comfy_inprocess.run_node(nodes.scheduler_guider.Scheduler, preset="Quality 48", steps=48, mu=0.0,
                                       std=1.5, width=32, height=32, denoise=0.25)
    assert len(tail) - 1 == 12
    options = {"transformer_options": {"sample_sigmas": tail.float()}}
    assert guider.guidance_for(tail[-2:-1].float(), options) == 3.0
