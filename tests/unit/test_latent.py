"""Latent layout and pixel conversion (ideogram4.latent) against hand-computed values and the spec's formulas."""

import numpy as np
import pytest
import torch

from ideogram4 import latent as L


# --- constants (spec E.2) ------------------------------------------------------------------------------------

# (index, shift, scale) read off the spec table; index = k*32 + c, one or more per 32-block k = pi*2 + pj.
SPEC_VALUES = [
    (0, 0.01984364, 1.63933691),  # k=0, c=0
    (14, 0.3758261, 1.73419528),  # k=0, c=14
    (31, -0.03571246, 1.65976433),  # k=0, c=31
    (35, 0.26952152, 1.91310663),  # k=1, c=3
    (63, -0.04025005, 1.66041308),  # k=1, c=31
    (64, 0.01924137, 1.64710857),  # k=2, c=0
    (89, 0.12446, 1.53505068),  # k=2, c=25
    (99, 0.26038408, 1.94067348),  # k=3, c=3
    (127, -0.01760592, 1.68533454),  # k=3, c=31
]


def test_constants_are_128_float32_values():
    assert L.LATENT_SHIFT.shape == (128,) and L.LATENT_SHIFT.dtype == torch.float32
    assert L.LATENT_SCALE.shape == (128,) and L.LATENT_SCALE.dtype == torch.float32


@pytest.mark.parametrize("index,shift,scale", SPEC_VALUES)
def test_constants_match_spec_bit_for_bit(index, shift, scale):
    # Parsed like torch.tensor(tuple, dtype=float32): the decimal literal rounded once to float32.
    assert L.LATENT_SHIFT[index].item() == torch.tensor(shift, dtype=torch.float32).item()
    assert L.LATENT_SCALE[index].item() == torch.tensor(scale, dtype=torch.float32).item()


def test_denormalize_is_scale_then_shift_in_token_layout():
    tokens = torch.randn(2, 6, 128, dtype=torch.float32)
    raw = L.denormalize_latent(tokens)
    assert raw.dtype == torch.float32
    b, n, k = 1, 4, 99
    scale, shift = torch.tensor(1.94067348), torch.tensor(0.26038408)  # spec E.2, k=3, c=3
    expected = tokens[b, n, k] * scale + shift
    assert raw[b, n, k].item() == expected.item()
    # Zero tokens de-normalise to the shift, per token channel (no eps, no sqrt).
    assert torch.equal(L.denormalize_latent(torch.zeros(1, 3, 128))[0, 2], L.LATENT_SHIFT)


def test_denormalize_casts_half_inputs_to_float32():
    tokens = torch.randn(1, 2, 128).to(torch.bfloat16)
    assert torch.equal(L.denormalize_latent(tokens), tokens.float() * L.LATENT_SCALE + L.LATENT_SHIFT)


def test_normalize_inverts_denormalize():
    tokens = torch.randn(2, 5, 128)
    torch.testing.assert_close(L.normalize_latent(L.denormalize_latent(tokens)), tokens, rtol=0, atol=1e-6)
    raw = torch.randn(1, 2, 128)
    shift, scale = torch.tensor(0.01924137), torch.tensor(1.64710857)  # spec E.2, k=2, c=0
    assert L.normalize_latent(raw)[0, 1, 64].item() == ((raw[0, 1, 64] - shift) / scale).item()


def test_constants_reject_wrong_channel_count():
    with pytest.raises(ValueError, match="128"):
        L.denormalize_latent(torch.zeros(1, 4, 64))


# --- patchify / unpatchify (spec E.3) ------------------------------------------------------------------------


def test_unpatchify_matches_hand_computed_indices():
    gh, gw = 3, 5
    z = torch.randn(2, gh * gw, 128)
    latent = L.unpatchify(z, gh, gw)
    assert latent.shape == (2, 32, 2 * gh, 2 * gw)
    for b in range(2):
        for c in (0, 7, 31):
            for row in range(gh):
                for col in range(gw):
                    for pi in range(2):
                        for pj in range(2):
                            token, channel = row * gw + col, (pi * 2 + pj) * 32 + c
                            assert latent[b, c, 2 * row + pi, 2 * col + pj] == z[b, token, channel]


def test_patchify_and_unpatchify_are_exact_inverses():
    latent = torch.randn(2, 32, 8, 12)
    tokens = L.patchify(latent)
    assert tokens.shape == (2, 4 * 6, 128)
    assert torch.equal(L.unpatchify(tokens, 4, 6), latent)
    tokens = torch.randn(1, 6 * 2, 128)
    assert torch.equal(L.patchify(L.unpatchify(tokens, 6, 2)), tokens)


def test_denormalisation_is_indexed_by_patch_position():
    # Constant-zero tokens: the raw latent at patch position (pi, pj) holds shift[(pi*2 + pj)*32 + c].
    latent = L.unpatchify(L.denormalize_latent(torch.zeros(1, 4, 128)), 2, 2)
    for c in (0, 5, 31):
        for pi in range(2):
            for pj in range(2):
                assert latent[0, c, 2 + pi, 2 + pj] == L.LATENT_SHIFT[(pi * 2 + pj) * 32 + c]


def test_unpatchify_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="grid"):
        L.unpatchify(torch.zeros(1, 12, 128), 3, 5)


# --- ComfyUI LATENT order ------------------------------------------------------------------------------------


def test_comfy_latent_uses_channel_major_order():
    gh, gw = 2, 3
    tokens = torch.randn(2, gh * gw, 128)
    comfy = L.tokens_to_comfy_latent(tokens, gh, gw)
    assert comfy.shape == (2, 128, gh, gw)
    for c in (0, 13, 31):
        for pi in range(2):
            for pj in range(2):
                for row in range(gh):
                    for col in range(gw):
                        token, channel = row * gw + col, (pi * 2 + pj) * 32 + c
                        assert comfy[1, c * 4 + pi * 2 + pj, row, col] == tokens[1, token, channel]


def test_comfy_latent_round_trip_is_exact():
    tokens = torch.randn(3, 4 * 5, 128)
    assert torch.equal(L.comfy_latent_to_tokens(L.tokens_to_comfy_latent(tokens, 4, 5)), tokens)
    comfy = torch.randn(1, 128, 3, 2)
    assert torch.equal(L.tokens_to_comfy_latent(L.comfy_latent_to_tokens(comfy), 3, 2), comfy)


def test_comfy_latent_matches_comfyui_flux2_packing_of_the_raw_latent():
    # ComfyUI packs a raw latent as "c (i pi) (j pj) -> (c pi pj) i j"; written here with plain indexing.
    raw = torch.randn(1, 32, 4, 6)
    packed = raw.reshape(1, 32, 2, 2, 3, 2).permute(0, 1, 3, 5, 2, 4).reshape(1, 128, 2, 3)
    assert torch.equal(L.tokens_to_comfy_latent(L.patchify(raw), 2, 3), packed)


# --- decoded pixels -> IMAGE ---------------------------------------------------------------------------------


def _save_image_bytes(image: torch.Tensor) -> np.ndarray:
    """What ComfyUI's SaveImage writes for an IMAGE: clip(255. * value, 0, 255).astype(uint8) (truncation)."""
    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)


def _official_bytes(decoded: torch.Tensor) -> np.ndarray:
    """The official formula, in numpy: round-half-even((clip(x, -1, 1) + 1) * 127.5) in float32, HWC."""
    x = np.clip(decoded.numpy().astype(np.float32), -1, 1)
    return np.round((x + np.float32(1.0)) * np.float32(127.5)).astype(np.uint8).transpose(0, 2, 3, 1)


def _decoded_samples() -> torch.Tensor:
    x = torch.rand(2, 3, 16, 24) * 2.4 - 1.2  # includes out-of-range values that must clamp
    x[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, -2.0, 3.0])
    return x


def test_reference_uint8_is_the_official_formula():
    x = _decoded_samples()
    k = L.reference_uint8(x)
    assert k.dtype == torch.uint8 and k.shape == (2, 16, 24, 3)
    assert np.array_equal(k.numpy(), _official_bytes(x))
    assert k[0, 0, :5, 0].tolist() == [0, 255, 128, 0, 255]  # 127.5 rounds half-to-even to 128


def test_exact_png_image_reproduces_official_bytes_through_save_image():
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    image = L.image_from_reference_uint8(every_byte)
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert np.array_equal(_save_image_bytes(image), every_byte.numpy())

    x = _decoded_samples()
    image = L.decoded_to_image(x)  # exact-PNG mode is the default
    assert image.shape == (2, 16, 24, 3) and image.dtype == torch.float32
    assert np.array_equal(_save_image_bytes(image), _official_bytes(x))


def test_linear_image_is_at_most_one_lsb_below_official_through_save_image():
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    image = L.decoded_to_image(x, exact_png=False)
    torch.testing.assert_close(image, ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1), rtol=0, atol=0)
    difference = _official_bytes(x).astype(int) - _save_image_bytes(image).astype(int)
    assert set(np.unique(difference).tolist()) == {0, 1}  # truncation: sometimes exactly one below, never above


def test_image_to_model_input_inverts_linear_image():
    x = (torch.randint(0, 256, (2, 3, 8, 16)).float() / 255.0) * 2 - 1
    image = L.linear_image(x)
    assert torch.allclose(L.image_to_model_input(image), x, atol=1e-6)
    rgba = torch.cat([image, torch.ones(2, 8, 16, 1)], dim=-1)
    assert L.image_to_model_input(rgba).shape == (2, 3, 8, 16)
