"""Loading FLUX.2 VAE files in the BFL/ComfyUI and diffusers layouts (spec E.5), and refusing other files."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from diffusers import AutoencoderKL, AutoencoderKLFlux2
from safetensors.torch import save_file

from ideogram4 import vae_checkpoint
from ideogram4.safetensors_io import CheckpointError
from ideogram4.vae import VAEConfig, decode_raw_latent, encode_image_to_tokens
from ideogram4.vae_checkpoint import load_vae


def _tiny_flux2(widths=(32, 64), seed=0) -> AutoencoderKLFlux2:
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=32,
    ).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        vae.bn.running_mean.normal_()  # stand-in FLUX.2 statistics; they must be ignored
    return vae


@pytest.fixture(scope="module")
def diffusers_vae():
    return _tiny_flux2()


def _contiguous(state_dict):
    return {k: v.detach().clone().contiguous() for k, v in state_dict.items()}


def _bfl_layout(diffusers_vae, quant_convs_inside: bool) -> dict:
    """The BFL/ComfyUI layout of ``diffusers_vae``, via the spec E.5 table (written out here as the oracle)."""
    d = diffusers_vae.state_dict()
    out = {}

    def resnet(dst, src):
        for name in ("norm1", "conv1", "norm2", "conv2"):
            for p in ("weight", "bias"):
                out[f"{dst}.{name}.{p}"] = d[f"{src}.{name}.{p}"]
        if f"{src}.conv_shortcut.weight" in d:
            out[f"{dst}.nin_shortcut.weight"] = d[f"{src}.conv_shortcut.weight"]
            out[f"{dst}.nin_shortcut.bias"] = d[f"{src}.conv_shortcut.bias"]

    levels = 2
    for side in ("encoder", "decoder"):
        for p in ("weight", "bias"):
            out[f"{side}.conv_in.{p}"] = d[f"{side}.conv_in.{p}"]
            out[f"{side}.conv_out.{p}"] = d[f"{side}.conv_out.{p}"]
            out[f"{side}.norm_out.{p}"] = d[f"{side}.conv_norm_out.{p}"]
            out[f"{side}.mid.attn_1.norm.{p}"] = d[f"{side}.mid_block.attentions.0.group_norm.{p}"]
            for bfl, dif in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
                tensor = d[f"{side}.mid_block.attentions.0.{dif}.{p}"]
                out[f"{side}.mid.attn_1.{bfl}.{p}"] = tensor[:, :, None, None] if p == "weight" else tensor
        resnet(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0")
        resnet(f"{side}.mid.block_2", f"{side}.mid_block.resnets.1")
    for i in range(levels):
        resnet(f"encoder.down.{i}.block.0", f"encoder.down_blocks.{i}.resnets.0")
        for j in range(2):
            resnet(f"decoder.up.{levels - 1 - i}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}")
    for p in ("weight", "bias"):
        out[f"encoder.down.0.downsample.conv.{p}"] = d[f"encoder.down_blocks.0.downsamplers.0.conv.{p}"]
        out[f"decoder.up.1.upsample.conv.{p}"] = d[f"decoder.up_blocks.0.upsamplers.0.conv.{p}"]
        out[f"{'encoder.' if quant_convs_inside else ''}quant_conv.{p}"] = d[f"quant_conv.{p}"]
        out[f"{'decoder.' if quant_convs_inside else ''}post_quant_conv.{p}"] = d[f"post_quant_conv.{p}"]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        out[f"bn.{name}"] = d[f"bn.{name}"]
    assert len(out) == len(d)
    return _contiguous(out)


def _decode(vae, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return decode_raw_latent(vae, torch.randn(1, 32, 4, 6))


def test_all_layouts_load_to_identical_models(diffusers_vae, tmp_path):
    files = {
        "diffusers": _contiguous(diffusers_vae.state_dict()),
        "bfl": _bfl_layout(diffusers_vae, quant_convs_inside=True),
        "comfyui": _bfl_layout(diffusers_vae, quant_convs_inside=False),
        "prefixed": {f"vae.{k}": v for k, v in _bfl_layout(diffusers_vae, quant_convs_inside=True).items()},
    }
    reference = load_vae(files["diffusers"])
    expected = _decode(reference)
    for name, state_dict in files.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(state_dict, str(path))
        loaded = load_vae(path)
        assert loaded.config == reference.config
        loaded_tensors = loaded.state_dict()
        for key, tensor in reference.state_dict().items():
            assert torch.equal(loaded_tensors[key], tensor), (name, key)
        assert torch.equal(_decode(loaded), expected), name


def test_canonical_names_follow_the_spec_mapping(diffusers_vae):
    d = diffusers_vae.state_dict()
    loaded = load_vae(_contiguous(d)).state_dict()
    assert loaded.keys() == _bfl_layout(diffusers_vae, quant_convs_inside=False).keys() - {
        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"
    }
    # Hand-picked rows of spec E.5, including the decoder index reversal and the linear -> 1x1 conv reshape.
    assert torch.equal(loaded["decoder.up.1.block.1.conv2.weight"], d["decoder.up_blocks.0.resnets.1.conv2.weight"])
    assert torch.equal(
        loaded["decoder.up.0.block.0.nin_shortcut.weight"], d["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
    )
    assert torch.equal(loaded["decoder.up.1.upsample.conv.bias"], d["decoder.up_blocks.0.upsamplers.0.conv.bias"])
    assert loaded["decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    q = d["decoder.mid_block.attentions.0.to_q.weight"]
    assert torch.equal(loaded["decoder.mid.attn_1.q.weight"][..., 0, 0], q)
    assert torch.equal(loaded["encoder.mid.attn_1.proj_out.bias"], d["encoder.mid_block.attentions.0.to_out.0.bias"])
    assert torch.equal(
        loaded["encoder.down.0.downsample.conv.weight"], d["encoder.down_blocks.0.downsamplers.0.conv.weight"]
    )
    assert torch.equal(loaded["encoder.norm_out.weight"], d["encoder.conv_norm_out.weight"])
    assert torch.equal(loaded["post_quant_conv.weight"], d["post_quant_conv.weight"])
    assert not any(k.startswith("bn.") for k in loaded)


def test_config_is_read_from_shapes_for_a_four_level_model():
    reference = _tiny_flux2(widths=(32, 32, 64, 64), seed=3)
    vae = load_vae(_contiguous(reference.state_dict()))
    assert vae.config == VAEConfig(
        in_channels=3, out_channels=3, latent_channels=32, encoder_channels=(32, 32, 64, 64),
        decoder_channels=(32, 32, 64, 64), encoder_blocks_per_level=1, decoder_blocks_per_level=2,
    )
    assert vae.downscale_factor == 8
    raw = torch.randn(1, 32, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(decode_raw_latent(vae, raw), reference.decode(raw).sample, rtol=0, atol=1e-5)


def test_dtype_and_operations_are_used_for_every_layer(diffusers_vae):
    class CountingConv2d(nn.Conv2d):
        pass

    class CountingGroupNorm(nn.GroupNorm):
        pass

    ops = SimpleNamespace(
        Conv2d=CountingConv2d, GroupNorm=CountingGroupNorm, Linear=None, RMSNorm=None, LayerNorm=None, Embedding=None
    )
    vae = load_vae(_contiguous(diffusers_vae.state_dict()), dtype=torch.bfloat16, operations=ops)
    leaves = [m for m in vae.modules() if not list(m.children())]
    assert leaves and all(isinstance(m, (CountingConv2d, CountingGroupNorm)) for m in leaves)
    assert all(p.dtype == torch.bfloat16 for p in vae.parameters())
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


def test_decoder_only_file_decodes_and_refuses_to_encode(diffusers_vae):
    full = load_vae(_contiguous(diffusers_vae.state_dict()))
    bfl = _bfl_layout(diffusers_vae, quant_convs_inside=True)
    decoder_only = {k: v for k, v in bfl.items() if not k.startswith("encoder.")}
    vae = load_vae(decoder_only)
    assert vae.encoder is None and not vae.config.has_encoder
    assert torch.equal(_decode(vae), _decode(full))
    with pytest.raises(RuntimeError, match="encoder"):
        encode_image_to_tokens(vae, torch.zeros(1, 3, 8, 8))


# --- wrong files ---------------------------------------------------------------------------------------------


def _refuse_reading_tensors(monkeypatch):
    """Wrong files must be recognised from the header alone: reading tensor data fails the test."""
    monkeypatch.setattr(vae_checkpoint, "read_safetensors", lambda *a, **k: pytest.fail("tensor data was read"))


@pytest.mark.parametrize(
    "name,keys,looks_like",
    [
        ("ideogram4_dit.safetensors", ["layers.0.attention.qkv.weight", "llm_cond_proj.weight"], "diffusion model"),
        ("flux_dit.safetensors", ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], "diffusion model"),
        ("qwen3vl.safetensors", ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"], "text enc"),
        ("random.safetensors", ["foo.weight"], "no VAE decoder weights"),
    ],
)
def test_non_vae_files_are_named_for_what_they_look_like(tmp_path, monkeypatch, name, keys, looks_like):
    path = tmp_path / name
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    _refuse_reading_tensors(monkeypatch)
    with pytest.raises(CheckpointError, match=looks_like) as error:
        load_vae(path)
    assert name in str(error.value) and "FLUX.2 VAE" in str(error.value)


@pytest.mark.parametrize("latent_channels,family", [(4, "SD1"), (16, "FLUX.1")])
def test_other_image_vaes_are_refused(tmp_path, monkeypatch, latent_channels, family):
    sd_vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32,
    )
    path = tmp_path / "other_vae.safetensors"
    save_file(_contiguous(sd_vae.state_dict()), str(path))
    _refuse_reading_tensors(monkeypatch)
    with pytest.raises(CheckpointError, match=family) as error:
        load_vae(path)
    assert "other_vae.safetensors" in str(error.value) and f"{latent_channels} latent channels" in str(error.value)


def test_damaged_files_name_the_missing_and_unknown_keys(diffusers_vae, tmp_path):
    state_dict = _bfl_layout(diffusers_vae, quant_convs_inside=True)
    del state_dict["decoder.up.0.block.1.conv2.bias"]
    path = tmp_path / "damaged.safetensors"
    save_file(state_dict, str(path))
    with pytest.raises(CheckpointError, match=r"damaged\.safetensors.*decoder\.up\.0\.block\.1\.conv2\.bias"):
        load_vae(path)

    state_dict = _contiguous(diffusers_vae.state_dict())
    state_dict["decoder.mid_block.attentions.0.to_extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="to_extra"):
        load_vae(state_dict)

    state_dict = _contiguous(diffusers_vae.state_dict())
    state_dict["decoder.conv_out.weight"] = torch.zeros(3, 16, 3, 3)  # contradicts the 32-wide last level
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        load_vae(state_dict)


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "flux2-vae.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="flux2-vae.safetensors"):
        load_vae(path)
