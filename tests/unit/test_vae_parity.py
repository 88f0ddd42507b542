"""The pack's FLUX.2 VAE against diffusers' AutoencoderKLFlux2 (tiny random config, float32, CPU).

diffusers de-normalises with ``vae.bn`` (spec E.2 CONFLICT); the pack uses Ideogram's constants, so the
oracle here is diffusers' *decoder* fed the latent de-normalised and unpatchified by hand (spec formulas).
"""

import pytest
import torch
from diffusers import AutoencoderKLFlux2

from ideogram4.latent import LATENT_SCALE, LATENT_SHIFT, normalize_latent
from ideogram4.vae import decode_latent_tokens, decode_raw_latent, encode_image_to_tokens, tile_starts, tiled_decode
from ideogram4.vae_checkpoint import load_vae

TOLERANCE = 1e-5  # float32, outputs of order 1: a few ulps of rounding-order differences (1x1 conv vs linear q/k/v)


def _tiny_diffusers_vae() -> AutoencoderKLFlux2:
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=32,
    ).eval()
    with torch.no_grad():  # move every weight (GroupNorm affines included) off its default initialisation
        for parameter in vae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return vae


@pytest.fixture(scope="module")
def models():
    reference = _tiny_diffusers_vae()
    return reference, load_vae(reference.state_dict())


def _hand_raw_latent(tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Spec E.2/E.3 written out: raw = tokens*scale + shift; latent[b,c,2r+pi,2q+pj] = raw[b,r*gw+q,(pi*2+pj)*32+c]."""
    raw = tokens * LATENT_SCALE + LATENT_SHIFT
    latent = torch.empty(tokens.shape[0], 32, 2 * gh, 2 * gw)
    for r in range(gh):
        for q in range(gw):
            for pi in range(2):
                for pj in range(2):
                    k = pi * 2 + pj
                    latent[:, :, 2 * r + pi, 2 * q + pj] = raw[:, r * gw + q, k * 32 : (k + 1) * 32]
    return latent


def test_decode_matches_diffusers(models):
    reference, vae = models
    raw = torch.randn(2, 32, 6, 10)
    with torch.no_grad():
        expected = reference.decode(raw).sample
        actual = decode_raw_latent(vae, raw)
    assert actual.shape == expected.shape == (2, 3, 12, 20)
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)


def test_decode_latent_tokens_follows_the_official_order(models):
    reference, vae = models
    gh, gw = 3, 4
    tokens = torch.randn(2, gh * gw, 128)
    with torch.no_grad():
        expected = reference.decode(_hand_raw_latent(tokens, gh, gw)).sample.clamp(-1, 1)
        actual = decode_latent_tokens(vae, tokens, gh, gw, torch.float32)
    assert actual.dtype == torch.float32 and actual.shape == (2, 3, 2 * 2 * gh, 2 * 2 * gw)
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)


def test_decode_casts_the_latent_to_the_requested_dtype(models):
    reference, _ = models
    vae_bf16 = load_vae(reference.state_dict(), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in vae_bf16.parameters())
    seen = []
    vae_bf16.post_quant_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    tokens = torch.randn(1, 4, 128)
    with torch.no_grad():
        out = decode_latent_tokens(vae_bf16, tokens, 2, 2, torch.bfloat16)
        expected = vae_bf16.decode(_hand_raw_latent(tokens, 2, 2).to(torch.bfloat16)).float().clamp(-1, 1)
    assert seen[0] == torch.bfloat16 and out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_encode_matches_diffusers_posterior_mean(models):
    reference, vae = models
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        mean = reference.encode(image).latent_dist.mean  # (2, 32, 8, 12)
        tokens = encode_image_to_tokens(vae, image)
    assert tokens.shape == (2, 4 * 6, 128) and tokens.dtype == torch.float32
    # Inverse of the hand de-normalisation/unpatchify: latent value -> its token slot, then (x - shift) / scale.
    b, c, r, q, pi, pj = 1, 17, 2, 5, 1, 0
    raw_value = mean[b, c, 2 * r + pi, 2 * q + pj]
    k = (pi * 2 + pj) * 32 + c
    expected_value = (raw_value - LATENT_SHIFT[k]) / LATENT_SCALE[k]
    assert abs(tokens[b, r * 6 + q, k].item() - expected_value.item()) <= TOLERANCE
    torch.testing.assert_close(_hand_raw_latent(tokens, 4, 6), mean, rtol=0, atol=TOLERANCE)


def test_encode_rejects_sizes_that_do_not_tokenise(models):
    _, vae = models
    with pytest.raises(ValueError, match="multiples of 4"):  # tiny model: 2x VAE * 2x patch
        encode_image_to_tokens(vae, torch.zeros(1, 3, 16, 18))


# --- tiled decode --------------------------------------------------------------------------------------------


def test_one_tile_covering_the_latent_equals_the_untiled_decode(models):
    _, vae = models
    tokens = torch.randn(1, 6 * 8, 128)
    with torch.no_grad():
        untiled = decode_latent_tokens(vae, tokens, 6, 8, torch.float32)
        tiled = decode_latent_tokens(vae, tokens, 6, 8, torch.float32, tiled=True, tile_size=16, tile_overlap=4)
    assert torch.equal(tiled, untiled)


def test_tile_starts_cover_the_latent_with_the_requested_overlap():
    assert tile_starts(32, 24, 8) == [0, 8]
    assert tile_starts(48, 24, 8) == [0, 12, 24]
    assert tile_starts(20, 24, 8) == [0]
    assert tile_starts(16, 12, 4) == [0, 4] and tile_starts(28, 12, 4) == [0, 8, 16]  # the grid used below
    for length in range(25, 200, 7):
        starts = tile_starts(length, 24, 8)
        assert starts[0] == 0 and starts[-1] + 24 == length
        assert all(b - a <= 24 - 8 for a, b in zip(starts, starts[1:]))


def test_tiled_blending_is_exact_for_a_pointwise_decoder():
    # A decoder without spatial context (1x1 mixing, nearest x3 upsample): any correct placement and
    # normalisation of the blend weights must reproduce the untiled output up to float rounding.
    mix = torch.randn(3, 32)

    def pointwise(z):
        return torch.einsum("oc,bchw->bohw", mix, z).repeat_interleave(3, 2).repeat_interleave(3, 3)

    raw = torch.randn(2, 32, 37, 53)
    tiled = tiled_decode(pointwise, raw, upscale=3, tile_size=16, overlap=5)
    torch.testing.assert_close(tiled, pointwise(raw), rtol=0, atol=1e-5)


def test_real_tiling_error_is_bounded_by_the_covering_tiles(models):
    # GroupNorm statistics and the mid-block attention are computed per tile, so tiling changes the output
    # (as any tiled VAE decode does). The blend is a convex combination of the covering tiles' decodes, so the
    # justified bound is pointwise: |tiled - untiled| <= max over covering tiles |tile decode - untiled|.
    _, vae = models
    raw = torch.randn(1, 32, 16, 28)
    tile, overlap, up = 12, 4, vae.downscale_factor
    with torch.no_grad():
        untiled = decode_raw_latent(vae, raw)
        tiled = tiled_decode(lambda z: decode_raw_latent(vae, z), raw, up, tile, overlap)
        worst = torch.zeros_like(untiled)
        for top in tile_starts(16, tile, overlap):
            for left in tile_starts(28, tile, overlap):
                alone = decode_raw_latent(vae, raw[:, :, top : top + tile, left : left + tile])
                region = (..., slice(top * up, (top + tile) * up), slice(left * up, (left + tile) * up))
                worst[region] = torch.maximum(worst[region], (alone - untiled[region]).abs())
    error = (tiled - untiled).abs()
    assert bool((error <= worst + 1e-5).all())
    assert error.mean() < 0.5 * worst.mean()  # the cross-fade does better than the worst tile everywhere
