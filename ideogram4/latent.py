"""Ideogram 4 latent layout: normalisation constants, 2x2 patching, ComfyUI LATENT order, IMAGE conversion.

Three layouts of the same numbers appear in the pack:

* **tokens** ``(B, N, 128)`` float32, ``N = grid_h * grid_w``: what the DiT and the sampler see. Token
  ``row * grid_w + col`` holds the 2x2 patch at latent rows ``2*row + pi`` and columns ``2*col + pj``; its
  channel ``(pi*2 + pj)*32 + c`` is VAE channel ``c`` of patch position ``(pi, pj)`` ("patch-major").
  The sampler's tokens are *normalised* with Ideogram's own 128 constants below.
* **raw latent** ``(B, 32, 2*grid_h, 2*grid_w)``: what the FLUX.2 VAE decoder consumes, de-normalised.
* **ComfyUI LATENT** ``(B, 128, grid_h, grid_w)``: the normalised tokens in ComfyUI's FLUX.2 packing, channel
  ``c*4 + pi*2 + pj`` ("channel-major"). A pure permutation of the tokens, so it is lossless.

De-normalisation follows the official ``_decode`` (spec E.2/E.3): ``tokens * LATENT_SCALE + LATENT_SHIFT`` in
float32 in token layout, *then* unpatchify. The VAE's own ``bn`` running statistics are never used: they are
FLUX.2's statistics, not Ideogram's.

Nothing here holds weights; this module is pure tensor bookkeeping.
"""

import torch

from .constants import PATCH_SIZE, TOKEN_CHANNELS, VAE_LATENT_CHANNELS  # noqa: F401  (the layout this module converts)

# Ideogram's latent statistics (official latent_norm.py, spec E.2), index k*32 + c with k = pi*2 + pj.
# Kept as the decimal literals the reference publishes so float32 parsing gives the same bits.
_SHIFT_VALUES: tuple[float, ...] = (
    # k=0 (pi=0, pj=0)
    0.01984364, 0.10149707, 0.29689495, 0.27188619, -0.21445648, -0.15979549, 0.05021099, -0.15083604,
    -0.15360136, -0.20131799, 0.01922352, 0.0622626, 0.10140969, -0.06739428, 0.3758261, -0.233712,
    0.35164491, -0.02590912, -0.0271935, -0.10833897, -0.1476848, -0.01130957, -0.2298372, 0.23526423,
    -0.10893522, 0.11957631, 0.04047799, 0.3134589, -0.17225064, -0.18646109, -0.34691978, -0.03571246,
    # k=1 (pi=0, pj=1)
    0.02583857, 0.10190072, 0.28402294, 0.26952152, -0.21634675, -0.17938656, 0.04358909, -0.15007621,
    -0.1548502, -0.18971131, 0.02710861, 0.05609494, 0.10697846, -0.06854968, 0.38167698, -0.24269937,
    0.35705471, -0.03063305, -0.02946109, -0.11244286, -0.14336038, -0.01362137, -0.21863696, 0.23228983,
    -0.11739769, 0.11693044, 0.02563311, 0.31356594, -0.17420591, -0.19006285, -0.34905377, -0.04025005,
    # k=2 (pi=1, pj=0)
    0.01924137, 0.07652984, 0.2995608, 0.2628057, -0.22011674, -0.12715361, 0.04879879, -0.14075719,
    -0.15935895, -0.2123584, 0.01974813, 0.05523547, 0.10011992, -0.06428964, 0.37781868, -0.21491644,
    0.34254215, -0.03153528, -0.0310082, -0.10761415, -0.14730405, -0.02475182, -0.2285588, 0.2515081,
    -0.10445128, 0.12446, 0.07062869, 0.30880162, -0.18016875, -0.18869164, -0.34533499, -0.0129177,
    # k=3 (pi=1, pj=1)
    0.02578168, 0.07993659, 0.28642181, 0.26038408, -0.22459419, -0.14820155, 0.04059549, -0.14043529,
    -0.16111187, -0.2020305, 0.02602069, 0.04852717, 0.10432153, -0.06309942, 0.38402443, -0.22397003,
    0.34814481, -0.03774432, -0.03381438, -0.11245691, -0.14128767, -0.02853208, -0.21752016, 0.24872463,
    -0.11399775, 0.1222687, 0.05620835, 0.309178, -0.18065738, -0.19401479, -0.34495114, -0.01760592,
)

_SCALE_VALUES: tuple[float, ...] = (
    # k=0 (pi=0, pj=0)
    1.63933691, 1.70204478, 1.73642566, 1.90004803, 1.6675316, 1.69059584, 1.56853198, 1.62314944,
    1.89106626, 1.58086668, 1.60822129, 1.60962993, 1.63322129, 1.56074359, 1.73419528, 1.7919265,
    1.64040632, 1.66802808, 1.60390303, 1.75480492, 1.63187587, 1.64334594, 1.61722884, 1.60146046,
    1.63459219, 1.55291476, 1.68771497, 1.68415657, 1.78966054, 1.66631641, 1.65626686, 1.65976433,
    # k=1 (pi=0, pj=1)
    1.63487607, 1.69513249, 1.72933756, 1.91310663, 1.67035057, 1.72286863, 1.56719251, 1.61934825,
    1.88628859, 1.56911539, 1.59455129, 1.60829869, 1.62470611, 1.56052853, 1.73677003, 1.77563606,
    1.63732541, 1.66370527, 1.59508952, 1.75153949, 1.63029275, 1.64517667, 1.61659342, 1.59722044,
    1.64103121, 1.5408531, 1.68610394, 1.67772755, 1.78998563, 1.66621713, 1.65458955, 1.66041308,
    # k=2 (pi=1, pj=0)
    1.64710857, 1.68163503, 1.74000294, 1.92784786, 1.67411194, 1.67395548, 1.57406532, 1.62199356,
    1.87618195, 1.5584375, 1.57438785, 1.61711053, 1.63094305, 1.55644029, 1.73124302, 1.80666627,
    1.6463621, 1.65932006, 1.60816188, 1.75682671, 1.64695873, 1.63121722, 1.61380832, 1.60478651,
    1.63396035, 1.53505068, 1.65534289, 1.67132281, 1.80317197, 1.6767314, 1.65700938, 1.68426259,
    # k=3 (pi=1, pj=1)
    1.65339716, 1.67540638, 1.73298504, 1.94067348, 1.67893609, 1.70635117, 1.5730906, 1.61928553,
    1.87148809, 1.56244866, 1.56697152, 1.61584394, 1.62759496, 1.55480378, 1.73484107, 1.79055143,
    1.64688773, 1.66121492, 1.60135887, 1.75254572, 1.64798332, 1.62989921, 1.61381592, 1.60792883,
    1.63939668, 1.53075757, 1.65371318, 1.66801185, 1.80029087, 1.67591476, 1.65655173, 1.68533454,
)

LATENT_SHIFT = torch.tensor(_SHIFT_VALUES, dtype=torch.float32)
LATENT_SCALE = torch.tensor(_SCALE_VALUES, dtype=torch.float32)


def _check_tokens(tokens: torch.Tensor, grid_h: int, grid_w: int) -> None:
    if tokens.ndim != 3 or tokens.shape[1] != grid_h * grid_w or tokens.shape[2] % (PATCH_SIZE * PATCH_SIZE):
        raise ValueError(
            f"expected latent tokens of shape (B, grid_h*grid_w={grid_h * grid_w}, 4*C) for a {grid_h}x{grid_w} "
            f"token grid, got {tuple(tokens.shape)}; pass the grid the tokens were sampled with (height/16, width/16)"
        )


def _check_constants_fit(tokens: torch.Tensor) -> None:
    if tokens.shape[-1] != TOKEN_CHANNELS:
        raise ValueError(
            f"Ideogram 4 latent tokens have {TOKEN_CHANNELS} channels, got a tensor of shape {tuple(tokens.shape)}"
        )


def denormalize_latent(tokens: torch.Tensor) -> torch.Tensor:
    """Sampler tokens ``(B, N, 128)`` -> raw VAE tokens ``(B, N, 128)`` float32: ``tokens * scale + shift``.

    Computed in float32 as two separate operations (multiply, then add), exactly like the official ``_decode``.
    """
    _check_constants_fit(tokens)
    scale = LATENT_SCALE.to(tokens.device)
    shift = LATENT_SHIFT.to(tokens.device)
    return tokens.float() * scale + shift


def normalize_latent(raw_tokens: torch.Tensor) -> torch.Tensor:
    """Raw VAE tokens ``(B, N, 128)`` -> sampler tokens ``(B, N, 128)`` float32: ``(raw - shift) / scale``.

    The inverse of :func:`denormalize_latent` (up to float32 rounding), used to start img2img from an encoded image.
    """
    _check_constants_fit(raw_tokens)
    scale = LATENT_SCALE.to(raw_tokens.device)
    shift = LATENT_SHIFT.to(raw_tokens.device)
    return (raw_tokens.float() - shift) / scale


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """Raw latent ``(B, C, 2*gh, 2*gw)`` -> tokens ``(B, gh*gw, 4*C)`` in patch-major channel order.

    ``tokens[b, row*gw + col, (pi*2 + pj)*C + c] = latent[b, c, 2*row + pi, 2*col + pj]``.
    """
    if latent.ndim != 4 or latent.shape[2] % PATCH_SIZE or latent.shape[3] % PATCH_SIZE:
        raise ValueError(f"expected a latent (B, C, H, W) with even H and W, got {tuple(latent.shape)}")
    b, c, h, w = latent.shape
    gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
    patches = latent.reshape(b, c, gh, PATCH_SIZE, gw, PATCH_SIZE)  # (b, c, row, pi, col, pj)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, PATCH_SIZE * PATCH_SIZE * c)


def unpatchify(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Tokens ``(B, gh*gw, 4*C)`` -> raw latent ``(B, C, 2*gh, 2*gw)``; the exact inverse of :func:`patchify`.

    ``latent[b, c, 2*row + pi, 2*col + pj] = tokens[b, row*gw + col, (pi*2 + pj)*C + c]`` (spec E.3).
    """
    _check_tokens(tokens, grid_h, grid_w)
    b, _, channels = tokens.shape
    c = channels // (PATCH_SIZE * PATCH_SIZE)
    patches = tokens.reshape(b, grid_h, grid_w, PATCH_SIZE, PATCH_SIZE, c)  # (b, row, col, pi, pj, c)
    return patches.permute(0, 5, 1, 3, 2, 4).reshape(b, c, grid_h * PATCH_SIZE, grid_w * PATCH_SIZE)


def tokens_to_comfy_latent(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Tokens ``(B, gh*gw, 128)`` -> ComfyUI FLUX.2 LATENT ``(B, 128, gh, gw)``, channel ``c*4 + pi*2 + pj``.

    A pure permutation (values are not touched), so it is bit-exact and :func:`comfy_latent_to_tokens` undoes it.
    """
    _check_tokens(tokens, grid_h, grid_w)
    b, _, channels = tokens.shape
    c = channels // (PATCH_SIZE * PATCH_SIZE)
    patches = tokens.reshape(b, grid_h, grid_w, PATCH_SIZE, PATCH_SIZE, c)  # (b, row, col, pi, pj, c)
    return patches.permute(0, 5, 3, 4, 1, 2).reshape(b, channels, grid_h, grid_w)


def comfy_latent_to_tokens(latent: torch.Tensor) -> torch.Tensor:
    """ComfyUI FLUX.2 LATENT ``(B, 128, gh, gw)`` -> tokens ``(B, gh*gw, 128)``.

    The inverse of :func:`tokens_to_comfy_latent`; the grid is the LATENT's spatial shape.
    """
    if latent.ndim != 4 or latent.shape[1] % (PATCH_SIZE * PATCH_SIZE):
        raise ValueError(
            f"expected a ComfyUI LATENT of shape (B, 128, height/16, width/16), got {tuple(latent.shape)}"
        )
    b, channels, gh, gw = latent.shape
    c = channels // (PATCH_SIZE * PATCH_SIZE)
    patches = latent.reshape(b, c, PATCH_SIZE, PATCH_SIZE, gh, gw)  # (b, c, pi, pj, row, col)
    return patches.permute(0, 4, 5, 2, 3, 1).reshape(b, gh * gw, channels)


# --- decoded pixels -> ComfyUI IMAGE -------------------------------------------------------------------------
#
# The official pipeline writes  uint8 = round_half_even((clamp(x, -1, 1) + 1) * 127.5)  (float32 arithmetic).
# ComfyUI's SaveImage / PreviewImage write  uint8 = clip(255 * image, 0, 255).astype(uint8)  — truncation.
# Feeding SaveImage the plain linear image (x + 1) / 2 therefore gives the official byte or one below it
# (whenever the fractional part is >= 0.5). Feeding it (k + 0.5) / 255, with k the official byte, makes the
# truncation land exactly on k, so SaveImage reproduces the official PNG bytes. That "exact PNG" mode is the
# default of decoded_to_image because fidelity to the reference is this pack's promise; its values differ
# from the linear image by at most half an 8-bit step (0.5/255), which no viewer can see.


def reference_uint8(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded pixels ``(B, 3, H, W)`` in [-1, 1] -> the official output bytes ``(B, H, W, 3)`` uint8.

    ``round_half_even((clamp(x, -1, 1) + 1) * 127.5)`` in float32, as the official ``_decode``.
    """
    x = decoded.float().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def image_from_reference_uint8(k: torch.Tensor) -> torch.Tensor:
    """Bytes ``(..., 3)`` uint8 -> float32 IMAGE values ``min((k + 0.5) / 255, 1)``.

    ComfyUI's SaveImage truncates ``255 * value``, which gives back exactly ``k`` for every byte (for k=255 the
    value is capped at 1.0 so the IMAGE stays within [0, 1]; 255 * 1.0 is still 255).
    """
    return ((k.float() + 0.5) / 255.0).clamp(max=1.0)


def linear_image(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded pixels ``(B, 3, H, W)`` -> IMAGE ``(B, H, W, 3)`` float32 ``(clamp(x, -1, 1) + 1) / 2``.

    The plain conversion. Through SaveImage it gives the official byte or one LSB below it (see module notes).
    """
    x = decoded.float().clamp(-1.0, 1.0)
    return ((x + 1.0) * 0.5).permute(0, 2, 3, 1).contiguous()


def decoded_to_image(decoded: torch.Tensor, exact_png: bool = True) -> torch.Tensor:
    """Decoded pixels ``(B, 3, H, W)`` in [-1, 1] -> ComfyUI IMAGE ``(B, H, W, 3)`` float32 in [0, 1].

    ``exact_png=True`` (default, what the decode node should use): values ``(k + 0.5) / 255`` of the official
    bytes ``k`` (:func:`reference_uint8`), so ComfyUI's SaveImage writes the reference PNG bytes exactly.
    ``exact_png=False``: the linear image :func:`linear_image` (SaveImage may then be 1 LSB below the reference).
    """
    if decoded.ndim != 4 or decoded.shape[1] != 3:
        raise ValueError(f"expected decoded pixels of shape (B, 3, H, W), got {tuple(decoded.shape)}")
    if exact_png:
        return image_from_reference_uint8(reference_uint8(decoded)).contiguous()
    return linear_image(decoded)


def image_to_model_input(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``(B, H, W, C)`` in [0, 1] -> VAE encoder input ``(B, 3, H, W)`` float32 in [-1, 1].

    Extra channels (an alpha channel) are dropped; values are clamped to [0, 1] first.
    """
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"expected a ComfyUI IMAGE of shape (B, H, W, 3), got {tuple(image.shape)}")
    x = image[..., :3].float().clamp(0.0, 1.0)
    return (x * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()
