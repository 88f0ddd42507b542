"""Load a FLUX.2 VAE file (BFL / ComfyUI or diffusers key layout) into :class:`ideogram4.vae.Flux2AutoEncoder`.

Accepted layouts, all converted to the module's canonical (ComfyUI) names, see :mod:`ideogram4.vae`:

* **ComfyUI / BFL** (``flux2-vae.safetensors``): ``encoder.down.{i}.block.{j}...``, ``decoder.up.{i}...``,
  ``mid.attn_1.{q,k,v,proj_out}`` as 1x1 convs; ``quant_conv``/``post_quant_conv`` either at the top level
  (ComfyUI) or as ``encoder.quant_conv``/``decoder.post_quant_conv`` (BFL / official).
* **diffusers** (``vae/diffusion_pytorch_model.safetensors``, spec E.5): ``down_blocks``/``up_blocks``/
  ``mid_block``, ``conv_shortcut``, ``conv_norm_out``, attention ``to_q/to_k/to_v/to_out.0`` as ``(C, C)``
  linears, with the decoder's ``up_blocks`` index reversed (``up_blocks.i`` = level ``levels-1-i``).
* Either layout under a ``vae.`` or ``first_stage_model.`` prefix.

Widths, block counts, latent channels and whether an encoder is present are read from the tensor shapes, so
any size loads (the tests use tiny models). GroupNorm group count cannot be read from shapes; it is 32 in
every FLUX.2 VAE (pass ``norm_groups`` only for hand-made test models). ``bn.*`` buffers are accepted and
dropped: Ideogram de-normalises with its own constants (:mod:`ideogram4.latent`).

Files that are not a FLUX.2 VAE (a DiT, a text encoder, an SD/FLUX.1 VAE) are recognised from the header
alone, before any tensor data is read, and raise :class:`CheckpointError` saying what the file looks like.
"""

import os
import re

import torch

from .safetensors_io import CheckpointError, read_safetensors, read_safetensors_header
from .vae import Flux2AutoEncoder, VAEConfig

FLUX2_LATENT_CHANNELS = 32
_WRAPPER_PREFIXES = ("vae.", "first_stage_model.")
_EXPECTED = (
    "the FLUX.2 VAE (ComfyUI 'vae/flux2-vae.safetensors' from Comfy-Org/flux2-dev, or a diffusers "
    "'vae/diffusion_pytorch_model.safetensors' of AutoencoderKLFlux2; 32 latent channels)"
)


def load_vae(
    path_or_state_dict,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    operations=None,
    *,
    norm_groups: int = 32,
    share_tensors: bool = False,
) -> Flux2AutoEncoder:
    """Build a :class:`Flux2AutoEncoder` from a file/folder path or a state dict, in eval mode.

    ``dtype`` defaults to the file's weight dtype (float32 for the published files; the official pipeline
    decodes in bf16), ``device`` to CPU. ``operations`` is the layer namespace (ComfyUI passes ``comfy.ops``).
    ``share_tensors`` (a state dict already in ``dtype``): the model holds the given tensors themselves instead of
    copies (built without storage of its own), for a caller that borrows another model's weights for one call.
    Raises :class:`CheckpointError` naming the source when it is not a FLUX.2 VAE.
    """
    if isinstance(path_or_state_dict, dict):
        source = "<state dict>"
        shapes = {k: tuple(v.shape) for k, v in path_or_state_dict.items()}
        prefix = classify_vae_keys(shapes, source)
        state_dict = {k[len(prefix):]: v for k, v in path_or_state_dict.items() if k.startswith(prefix)}
    else:
        source = os.fspath(path_or_state_dict)
        header, _ = read_safetensors_header(source)
        prefix = classify_vae_keys({k: tuple(shape) for k, (_, shape) in header.items()}, source)
        tensors, _ = read_safetensors(source, key_filter=lambda key: key.startswith(prefix))
        state_dict = {k[len(prefix):]: v for k, v in tensors.items()}

    state_dict = convert_vae_state_dict(state_dict, source)
    config = infer_vae_config(state_dict, source, norm_groups=norm_groups)
    dtype = dtype or state_dict["decoder.conv_in.weight"].dtype
    model = Flux2AutoEncoder(config, dtype=dtype, device="meta" if share_tensors else device, operations=operations)
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the VAE weights do not match the FLUX.2 autoencoder inferred from their shapes "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}); the file may be damaged or "
            f"a different VAE. Expected {_EXPECTED}."
        )
    try:
        model.load_state_dict({k: v.to(dtype=dtype) for k, v in state_dict.items()}, strict=True,
                              assign=share_tensors)
    except RuntimeError as error:  # a tensor whose shape contradicts the rest of the file
        raise CheckpointError(
            f"{source}: the VAE weights have inconsistent shapes ({error}); the file may be damaged. "
            f"Expected {_EXPECTED}."
        ) from None
    return model.eval().requires_grad_(False)


# --- recognising the file ------------------------------------------------------------------------------------


def classify_vae_keys(shapes: dict[str, tuple[int, ...]], source: str) -> str:
    """Check that ``shapes`` (key -> shape) describe a FLUX.2 VAE; return the key prefix to strip ("" if none).

    Raises :class:`CheckpointError` saying what the file looks like otherwise.
    """
    prefix = next((p for p in ("",) + _WRAPPER_PREFIXES if f"{p}decoder.conv_in.weight" in shapes), None)
    if prefix is None:
        raise CheckpointError(
            f"{source}: {_describe_non_vae(shapes)}, not a VAE. Expected {_EXPECTED}; put the file in the right "
            "models/ folder and pick the VAE file here."
        )
    conv_in = shapes[f"{prefix}decoder.conv_in.weight"]
    if len(conv_in) != 4:
        raise CheckpointError(
            f"{source}: looks like a video VAE (decoder.conv_in has shape {list(conv_in)}, a {len(conv_in) - 2}D "
            f"convolution), not an image VAE. Expected {_EXPECTED}."
        )
    latent_channels = conv_in[1]
    bn_shape = shapes.get(f"{prefix}bn.running_mean")
    if bn_shape is None and latent_channels != FLUX2_LATENT_CHANNELS:
        family = {4: "an SD1.x / SD2.x / SDXL VAE", 16: "an SD3 / FLUX.1 VAE"}.get(latent_channels, "a KL VAE")
        raise CheckpointError(
            f"{source}: looks like {family} ({latent_channels} latent channels, no FLUX.2 batch-norm statistics), "
            f"which cannot decode Ideogram 4 latents. Expected {_EXPECTED}."
        )
    if bn_shape is not None and tuple(bn_shape) != (4 * latent_channels,):
        raise CheckpointError(
            f"{source}: bn.running_mean has shape {list(bn_shape)} but the decoder takes {latent_channels} latent "
            f"channels (a FLUX.2 VAE has 4 x latent channels); the file is not a FLUX.2 VAE. Expected {_EXPECTED}."
        )
    return prefix


_DIT_KEY = re.compile(
    r"(^|\.)(layers\.\d+\.attention\.qkv|llm_cond_proj|double_blocks|single_blocks|transformer_blocks)\."
)
_TEXT_ENCODER_KEY = re.compile(r"(embed_tokens|self_attn\.q_proj|language_model|text_model)\b")


def _describe_non_vae(shapes: dict[str, tuple[int, ...]]) -> str:
    keys = list(shapes)
    if any(_DIT_KEY.search(k) or k.startswith(("model.diffusion_model.", "diffusion_model.")) for k in keys):
        return "looks like a diffusion model (DiT) — it belongs in models/diffusion_models"
    if any(_TEXT_ENCODER_KEY.search(k) for k in keys):
        return "looks like a text encoder — it belongs in models/text_encoders"
    return f"has no VAE decoder weights (no 'decoder.conv_in.weight'; first keys: {keys[:4]})"


# --- key conversion ------------------------------------------------------------------------------------------


def convert_vae_state_dict(
    state_dict: dict[str, torch.Tensor], source: str = "<state dict>"
) -> dict[str, torch.Tensor]:
    """Any accepted layout (prefix already stripped) -> canonical (ComfyUI) keys; ``bn.*`` dropped."""
    if any(k.startswith(("decoder.up_blocks.", "decoder.mid_block.", "encoder.down_blocks.")) for k in state_dict):
        state_dict = _diffusers_to_bfl(state_dict, source)
    out = {}
    for key, tensor in state_dict.items():
        if key.startswith("bn."):
            continue  # FLUX.2's latent statistics; Ideogram uses its own constants
        if key.startswith("encoder.quant_conv."):
            key = key[len("encoder."):]
        elif key.startswith("decoder.post_quant_conv."):
            key = key[len("decoder."):]
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", key) and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # linear (C, C) -> 1x1 conv (C, C, 1, 1)
        out[key] = tensor
    return out


_DIFFUSERS_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_DIFFUSERS_RESNET = {"conv_shortcut": "nin_shortcut"}
_DIFFUSERS_SAME = (
    "encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.", "quant_conv.", "post_quant_conv.",
    "bn.",
)
_DIFFUSERS_ATTENTION_KEY = re.compile(
    r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)"
)


def _diffusers_to_bfl(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    up_indices = {int(m.group(1)) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    levels = max(up_indices) + 1 if up_indices else 0
    out, unknown = {}, []
    for key, tensor in state_dict.items():
        new = _diffusers_key_to_bfl(key, levels)
        if new is None:
            unknown.append(key)
        else:
            out[new] = tensor
    if unknown:
        raise CheckpointError(
            f"{source}: diffusers-layout VAE with keys this loader does not know: {unknown[:5]}"
            f"{'...' if len(unknown) > 5 else ''}. Expected {_EXPECTED}."
        )
    return out


def _resnet_suffix(rest: str) -> str:
    name, _, param = rest.partition(".")
    return f"{_DIFFUSERS_RESNET.get(name, name)}.{param}"


def _diffusers_key_to_bfl(key: str, levels: int) -> str | None:
    if key.startswith(_DIFFUSERS_SAME):
        return key
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet_suffix(m[3])}"
    if m := _DIFFUSERS_ATTENTION_KEY.fullmatch(key):
        return f"{m[1]}.mid.attn_1.{_DIFFUSERS_ATTENTION[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet_suffix(m[3])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_resnet_suffix(m[3])}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return None


# --- shape inference -----------------------------------------------------------------------------------------


def _level_widths(state_dict, pattern: str, source: str) -> tuple[tuple[int, ...], int]:
    """Widths per level and ResNet blocks per level for ``pattern`` ("encoder.down" or "decoder.up")."""
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        if m := re.match(rf"{re.escape(pattern)}\.(\d+)\.block\.(\d+)\.conv1\.weight$", key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if not blocks:
        return (), 0
    levels = max(blocks) + 1
    counts = {len(blocks.get(level, ())) for level in range(levels)}
    if len(counts) != 1 or 0 in counts:
        raise CheckpointError(
            f"{source}: {pattern} levels have different ResNet block counts "
            f"({ {level: len(b) for level, b in sorted(blocks.items())} }); expected the same count on every level. "
            f"The file may be damaged. Expected {_EXPECTED}."
        )
    widths = tuple(state_dict[f"{pattern}.{level}.block.0.conv1.weight"].shape[0] for level in range(levels))
    return widths, counts.pop()


def infer_vae_config(
    state_dict: dict[str, torch.Tensor], source: str = "<state dict>", norm_groups: int = 32
) -> VAEConfig:
    """Read the :class:`VAEConfig` from canonical-layout tensor shapes."""
    decoder_channels, decoder_blocks = _level_widths(state_dict, "decoder.up", source)
    encoder_channels, encoder_blocks = _level_widths(state_dict, "encoder.down", source)
    if not decoder_channels:
        raise CheckpointError(
            f"{source}: no decoder.up.*.block.* weights found; the VAE decoder is incomplete. Expected {_EXPECTED}."
        )
    has_encoder = "encoder.conv_in.weight" in state_dict
    if has_encoder and not encoder_channels:
        raise CheckpointError(
            f"{source}: encoder.conv_in is present but no encoder.down.*.block.* weights; the file is incomplete. "
            f"Expected {_EXPECTED}."
        )
    decoder_conv_in = state_dict["decoder.conv_in.weight"]
    config = VAEConfig(
        in_channels=state_dict["encoder.conv_in.weight"].shape[1] if has_encoder else 3,
        out_channels=state_dict["decoder.conv_out.weight"].shape[0] if "decoder.conv_out.weight" in state_dict else 3,
        latent_channels=decoder_conv_in.shape[1],
        encoder_channels=encoder_channels if has_encoder else decoder_channels,
        decoder_channels=decoder_channels,
        encoder_blocks_per_level=encoder_blocks if has_encoder else 2,
        decoder_blocks_per_level=decoder_blocks,
        norm_groups=norm_groups,
        has_encoder=has_encoder,
    )
    for name in ("encoder_channels", "decoder_channels"):
        if any(width % norm_groups for width in getattr(config, name)):
            raise CheckpointError(
                f"{source}: VAE widths {getattr(config, name)} are not multiples of {norm_groups} GroupNorm groups; "
                f"FLUX.2 VAEs use 32 groups. Expected {_EXPECTED}."
            )
    return config
