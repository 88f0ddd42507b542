"""In-process host tests of the VAE nodes (run in the host's Python; see comfy_inprocess.py).

The oracle is the core decode (:func:`ideogram4.vae.decode_latent_tokens` on a plain-torch VAE loaded from the
same file, then :func:`ideogram4.latent.decoded_to_image`): the pack node, ComfyUI's native VAEDecode /
VAEDecodeTiled / VAEEncode on the pack VAE, and the pack node on a native-style FLUX.2 VAE object must all give
exactly its result.
"""

from __future__ import annotations

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

GRID_H, GRID_W = 3, 4


@pytest.fixture(scope="module")
def pack_vae(host, models):
    (vae,) = comfy_inprocess.run_node(host.nodes.vae_nodes.VAELoader, vae_name=tiny.VAE_FILE)
    return vae


@pytest.fixture(scope="module")
def core_vae(models):
    from ideogram4.vae_checkpoint import load_vae

    return load_vae(models / "vae" / tiny.VAE_FILE, dtype=torch.float32)


def random_latent(grid_h=GRID_H, grid_w=GRID_W, seed=3) -> torch.Tensor:
    return torch.randn((1, 128, grid_h, grid_w), generator=torch.Generator().manual_seed(seed))


def core_decode(core_vae, latent, **tiling) -> torch.Tensor:
    from ideogram4.latent import comfy_latent_to_tokens, decoded_to_image
    from ideogram4.vae import decode_latent_tokens

    _, _, grid_h, grid_w = latent.shape
    pixels = decode_latent_tokens(core_vae, comfy_latent_to_tokens(latent), grid_h, grid_w, **tiling)
    return decoded_to_image(pixels)


def test_pack_decode_equals_the_core_decode(host, pack_vae, core_vae):
    latent = random_latent()
    (image,) = comfy_inprocess.run_node(host.nodes.vae_nodes.VAEDecode, samples={"samples": latent}, vae=pack_vae,
                                        tiled=False)
    assert image.shape == (1, 16 * GRID_H, 16 * GRID_W, 3)
    assert torch.equal(image, core_decode(core_vae, latent))
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_native_vae_decode_node_gives_the_same_image(host, pack_vae, core_vae):
    latent = random_latent()
    native = comfy_inprocess.native_node("nodes", "VAEDecode")
    (image,) = comfy_inprocess.run_node(native, vae=pack_vae, samples={"samples": latent})
    assert torch.equal(image, core_decode(core_vae, latent))


def test_tiled_decode_equals_the_core_tiled_decode(host, pack_vae, core_vae):
    latent = random_latent(8, 8)
    # Native VAEDecodeTiled: 64 px tiles with 16 px overlap = 8 / 2 pixels of the VAE's own latent.
    native = comfy_inprocess.native_node("nodes", "VAEDecodeTiled")
    (image,) = comfy_inprocess.run_node(native, vae=pack_vae, samples={"samples": latent}, tile_size=64, overlap=16,
                                        temporal_size=64, temporal_overlap=8)
    expected = core_decode(core_vae, latent, tiled=True, tile_size=8, tile_overlap=2)
    assert torch.equal(image, expected)
    assert not torch.equal(expected, core_decode(core_vae, latent))  # more than one tile really was used
    # The node's tiled switch uses 1024 px tiles: a 128 px image is one tile, identical to the whole decode.
    (node_tiled,) = comfy_inprocess.run_node(host.nodes.vae_nodes.VAEDecode, samples={"samples": latent},
                                             vae=pack_vae, tiled=True)
    assert torch.equal(node_tiled, core_decode(core_vae, latent))


def test_native_vae_encode_node_gives_the_core_latent(host, pack_vae, core_vae):
    from ideogram4.latent import image_to_model_input, tokens_to_comfy_latent
    from ideogram4.vae import encode_image_to_tokens

    pixels = torch.rand((1, 48, 64, 3), generator=torch.Generator().manual_seed(4))
    native = comfy_inprocess.native_node("nodes", "VAEEncode")
    (latent,) = comfy_inprocess.run_node(native, vae=pack_vae, pixels=pixels)
    expected = tokens_to_comfy_latent(encode_image_to_tokens(core_vae, image_to_model_input(pixels)), 3, 4)
    assert torch.equal(latent["samples"], expected)


def native_flux2_vae(models):
    """A ComfyUI ``VAE`` object as ComfyUI builds one for a FLUX.2 file: its autoencoder (ComfyUI key layout, with
    the FLUX.2 ``bn`` statistics) in ``first_stage_model``, owned by its own patcher. ComfyUI's FLUX.2 autoencoder
    has fixed full-size channels, so the tiny stand-in's weights sit in the core module of the same layout."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    from ideogram4.vae_checkpoint import load_vae

    first_stage = load_vae(models / "vae" / tiny.VAE_FILE, dtype=torch.float32)
    first_stage.bn = torch.nn.BatchNorm2d(128)
    first_stage.bn.running_mean.fill_(0.5)  # would shift colours if used
    vae = comfy.sd.VAE.__new__(comfy.sd.VAE)
    vae.first_stage_model = first_stage
    vae.vae_dtype = torch.float32
    device = comfy.model_management.get_torch_device()
    vae.patcher = comfy.model_patcher.ModelPatcher(first_stage, load_device=device, offload_device=device)
    return vae


def test_decode_node_reuses_a_native_flux2_vae_with_ideogram_normalisation(host, core_vae, models, monkeypatch):
    """The pack node decodes a native FLUX.2 VAE with its weights and Ideogram's constants (not the bn stats),
    borrowing those weights for the call (no copy) and adding nothing to ComfyUI's VAE object."""
    vae_nodes = host.nodes.vae_nodes
    vae = native_flux2_vae(models)
    attributes = dict(vars(vae))
    borrowed = []
    original_load_vae = vae_nodes.load_vae

    def recording_load_vae(*args, **kwargs):
        borrowed.append(original_load_vae(*args, **kwargs))
        return borrowed[-1]

    monkeypatch.setattr(vae_nodes, "load_vae", recording_load_vae)
    latent = random_latent()
    for _ in range(2):
        (image,) = comfy_inprocess.run_node(vae_nodes.VAEDecode, samples={"samples": latent}, vae=vae, tiled=False)
        assert torch.equal(image, core_decode(core_vae, latent))
    assert vars(vae) == attributes
    native_storage = {tensor.data_ptr() for tensor in vae.first_stage_model.state_dict().values()}
    assert len(borrowed) == 2
    for model in borrowed:
        assert {tensor.data_ptr() for tensor in model.state_dict().values()} <= native_storage


def test_decode_rejects_a_latent_of_another_model(host, pack_vae):
    with pytest.raises(ValueError, match="expected a LATENT"):
        comfy_inprocess.run_node(host.nodes.vae_nodes.VAEDecode, samples={"samples": torch.zeros(1, 16, 4, 4)},
                                 vae=pack_vae, tiled=False)


def test_encode_crops_sides_that_are_not_multiples_of_16(host, pack_vae, core_vae):
    """A 70 x 50 image is encoded as its top-left 64 x 48 crop, as ComfyUI's own VAE.encode does."""
    from ideogram4.latent import image_to_model_input, tokens_to_comfy_latent
    from ideogram4.vae import encode_image_to_tokens

    pixels = torch.rand((1, 50, 70, 3), generator=torch.Generator().manual_seed(6))
    native = comfy_inprocess.native_node("nodes", "VAEEncode")
    (latent,) = comfy_inprocess.run_node(native, vae=pack_vae, pixels=pixels)
    cropped = pixels[:, :48, :64]
    expected = tokens_to_comfy_latent(encode_image_to_tokens(core_vae, image_to_model_input(cropped)), 3, 4)
    assert latent["samples"].shape == (1, 128, 3, 4)
    assert torch.equal(latent["samples"], expected)
