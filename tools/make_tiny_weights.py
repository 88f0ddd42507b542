"""Write tiny random Ideogram 4 stand-in models in the real file layouts, under the file names users have.

    python -m tools.make_tiny_weights MODELS_DIR [--seed 0] [--dit-format fp8|bf16]

writes, under ``MODELS_DIR`` (a ComfyUI ``models`` folder layout):

    diffusion_models/ideogram4_fp8_scaled.safetensors                conditional DiT
    diffusion_models/ideogram4_unconditional_fp8_scaled.safetensors  unconditional DiT (same shapes, other weights)
    text_encoders/qwen3vl_8b_fp8_scaled.safetensors                  36-layer Qwen3-VL language model
    text_encoders/qwen3-vl-8b-instruct-lm-head.safetensors           its LM head (for the Prompt Enhancer)
    vae/flux2-vae.safetensors                                        FLUX.2 KL autoencoder
    loras/ideogram4_lora.safetensors                                 a rank-4 LoRA on every block Linear

Layouts are those of the Comfy-Org repackaged files, so the pack's loaders read them through the same code as
the real ones:

* DiT: bare official keys (``input_proj``, ``layers.N.attention.qkv``, ...); the Linear weights inside the
  transformer blocks float8_e4m3fn with a per-tensor float32 ``weight_scale`` and a ``comfy_quant`` tensor (the
  UTF-8 bytes of ``{"format": "float8_e4m3fn"}``); everything else bf16. ``--dit-format bf16`` writes all bf16.
* Text encoder: ``model.language_model.{embed_tokens,layers.N...}`` (decoder Linear weights fp8 + comfy_quant as
  above, the rest bf16) plus a few ``model.visual.*`` tensors standing in for the vision tower, which the pack
  never reads. The vocabulary is the real one (151936) so the real Qwen tokenizer's ids fit.
* VAE: ComfyUI/BFL FLUX.2 keys (``encoder.down.i...``, ``decoder.up.i...``, ``quant_conv``,
  ``post_quant_conv``) in float32, plus the ``bn.*`` statistics ComfyUI detects a FLUX.2 VAE by. Four levels
  (8x downscale) as the real VAE, since one latent token must cover 16x16 pixels.

Tensors are drawn from one seeded generator, so the same seed writes byte-identical files. The dimensions are
tiny (TINY_*_CONFIG below); the DiT's text-feature width is the encoder's hidden size x 13 taps.
The pieces (module_shapes, random_tensors, the fp8 storages) also build tests/host/tiny_host_models.py's files.
"""

import argparse
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file

if __package__ in (None, ""):  # run as a file: the imports below need the pack's folder on the module path
    raise SystemExit(f"run it from the pack's folder as a module: python -m tools.{pathlib.Path(__file__).stem} ...")

from ideogram4.constants import QWEN3_VL_ACTIVATION_LAYERS  # noqa: E402
from ideogram4.dit import Ideogram4DiT  # noqa: E402
from ideogram4.dit_config import DiTConfig  # noqa: E402
from ideogram4.quantization import FP8_E4M3_MAX  # noqa: E402
from ideogram4.text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder  # noqa: E402
from ideogram4.vae import Flux2AutoEncoder, VAEConfig  # noqa: E402

DIT_FILE = "diffusion_models/ideogram4_fp8_scaled.safetensors"
UNCOND_DIT_FILE = "diffusion_models/ideogram4_unconditional_fp8_scaled.safetensors"
TEXT_ENCODER_FILE = "text_encoders/qwen3vl_8b_fp8_scaled.safetensors"
LM_HEAD_FILE = "text_encoders/qwen3-vl-8b-instruct-lm-head.safetensors"
VAE_FILE = "vae/flux2-vae.safetensors"
LORA_FILE = "loras/ideogram4_lora.safetensors"

TINY_TEXT_ENCODER_CONFIG = Qwen3VLTextConfig(
    vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=36,
    num_attention_heads=2, num_key_value_heads=1, head_dim=8,
)
# mrope_section: with head_dim 32 (16 frequency pairs) at most 5 h and 5 w pairs fit; (24, 5, 5) is also what
# the DiT loader infers from the shapes of a file without a config (the t entry is never read).
TINY_DIT_CONFIG = DiTConfig(
    num_layers=2, num_attention_heads=2, attention_head_dim=32, intermediate_size=128, adaln_dim=32,
    in_channels=128, llm_features_dim=TINY_TEXT_ENCODER_CONFIG.hidden_size * len(QWEN3_VL_ACTIVATION_LAYERS),
    mrope_section=(24, 5, 5),
)
# Widths must be multiples of the 32 GroupNorm groups every FLUX.2 VAE (and the pack's loader) uses.
TINY_VAE_CONFIG = VAEConfig(
    latent_channels=32, encoder_channels=(32, 32, 32, 32), decoder_channels=(32, 32, 32, 32),
    encoder_blocks_per_level=1, decoder_blocks_per_level=1,
)
COMFY_QUANT_FP8 = {"format": "float8_e4m3fn"}


def module_shapes(module_class, config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``module_class(config)``'s state dict (built on the meta device: no memory, no init)."""
    return {k: tuple(v.shape) for k, v in module_class(config, device="meta").state_dict().items()}


def random_tensors(shapes: dict[str, tuple[int, ...]], generator: torch.Generator,
                   embedding_std: float | None = 0.5) -> dict[str, torch.Tensor]:
    """Float32 weights that keep activations O(1): Linear/conv N(0, 1/fan_in), norms 1 + N(0, 0.1^2),
    biases N(0, 0.1^2), keys naming an ``embed`` N(0, embedding_std^2) (None: scaled like any other matrix).
    Drawn in sorted key order, so the result depends only on the generator's seed."""
    tensors = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if "norm" in name:
            value = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.1 * noise
        elif embedding_std is not None and "embed" in name:
            value = embedding_std * noise
        elif len(shape) >= 2:
            fan_in = 1
            for size in shape[1:]:
                fan_in *= size
            value = noise / fan_in ** 0.5
        else:
            value = noise
        tensors[name] = value
    return tensors


def quantize_fp8_per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI-style per-tensor fp8: (float8_e4m3fn weight, float32 scalar scale) with weight ~ fp8 * scale."""
    scale = (weight.abs().amax().float() / FP8_E4M3_MAX).clamp(min=1e-12)
    return (weight.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), scale.reshape(())


def comfy_quant_tensor(config: dict) -> torch.Tensor:
    """The ``.comfy_quant`` tensor ComfyUI reads a layer's quantisation from: the UTF-8 bytes of ``config``'s JSON."""
    return torch.tensor(list(json.dumps(config).encode("utf-8")), dtype=torch.uint8)


def store_comfy_quant_fp8(tensors: dict[str, torch.Tensor], quantize, prefix: str = "") -> dict[str, torch.Tensor]:
    """The Comfy-Org storage: ``quantize(name)`` picks the Linear weights stored as comfy_quant per-tensor fp8
    (+ ``weight_scale``, ``comfy_quant``); everything else bf16. Keys get ``prefix``."""
    stored = {}
    for name, value in tensors.items():
        key = prefix + name
        if quantize(name):
            layer = key[: -len(".weight")]
            stored[key], stored[layer + ".weight_scale"] = quantize_fp8_per_tensor(value)
            stored[layer + ".comfy_quant"] = comfy_quant_tensor(COMFY_QUANT_FP8)
        else:
            stored[key] = value.to(torch.bfloat16)
    return stored


def store_official_fp8_rowwise(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official fp8 layout: every block Linear weight float8_e4m3fn + a per-row float32 ``weight_scale``;
    everything else unchanged."""
    stored = {}
    for key, value in tensors.items():
        if is_block_linear_weight(key, value.shape):
            scale = value.abs().amax(dim=1) / FP8_E4M3_MAX
            stored[key] = (value / scale[:, None]).to(torch.float8_e4m3fn)
            stored[key[: -len(".weight")] + ".weight_scale"] = scale
        else:
            stored[key] = value
    return stored


def is_block_linear_weight(name: str, shape) -> bool:
    """A Linear weight inside a transformer block: the tensors the published fp8 files quantise."""
    return name.startswith("layers.") and name.endswith(".weight") and len(shape) == 2


def dit_state_dict(seed: int, fp8: bool = True, config: DiTConfig = TINY_DIT_CONFIG) -> dict[str, torch.Tensor]:
    """The tensors of a Comfy-Org-style DiT file (see the module docstring)."""
    shapes = module_shapes(Ideogram4DiT, config)
    tensors = random_tensors(shapes, torch.Generator().manual_seed(seed))
    return store_comfy_quant_fp8(tensors, lambda name: fp8 and is_block_linear_weight(name, shapes[name]))


def text_encoder_state_dict(seed: int, config: Qwen3VLTextConfig = TINY_TEXT_ENCODER_CONFIG) -> dict[str, torch.Tensor]:
    """The tensors of a Comfy-Org-style Qwen3-VL file: fp8 decoder Linear weights, a stand-in vision tower."""
    shapes = module_shapes(Qwen3VLTextEncoder, config)
    generator = torch.Generator().manual_seed(seed)
    stored = store_comfy_quant_fp8(random_tensors(shapes, generator),
                                   lambda name: is_block_linear_weight(name, shapes[name]), prefix="model.language_model.")
    # The real file also holds the final norm and the vision tower (the keys ComfyUI recognises Qwen3-VL by);
    # the pack never reads them, which a stand-in with the same key families checks.
    hidden = config.hidden_size
    extra = {
        "model.language_model.norm.weight": torch.ones(hidden),
        "model.visual.merger.linear_fc2.weight": torch.randn((hidden, 4 * hidden), generator=generator) * 0.05,
        "model.visual.deepstack_merger_list.0.norm.weight": torch.ones(4 * hidden),
    }
    stored.update({key: value.to(torch.bfloat16) for key, value in extra.items()})
    return stored


def lm_head_state_dict(seed: int, config: Qwen3VLTextConfig = TINY_TEXT_ENCODER_CONFIG) -> dict[str, torch.Tensor]:
    """The separate LM head file (``lm_head.weight`` only, bf16), as diffusers publishes it for Qwen3-VL-8B."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn((config.vocab_size, config.hidden_size), generator=generator) / config.hidden_size ** 0.5
    return {"lm_head.weight": weight.to(torch.bfloat16)}


def vae_state_dict(seed: int, config: VAEConfig = TINY_VAE_CONFIG) -> dict[str, torch.Tensor]:
    """The tensors of a ComfyUI FLUX.2 VAE file (float32), with the ``bn`` statistics of the real file."""
    generator = torch.Generator().manual_seed(seed)
    tensors = random_tensors(module_shapes(Flux2AutoEncoder, config), generator)
    bn_channels = 4 * config.latent_channels  # the 2x2-patchified latent the BatchNorm normalises
    tensors["bn.running_mean"] = 0.1 * torch.randn(bn_channels, generator=generator)
    tensors["bn.running_var"] = 1.0 + 0.5 * torch.rand(bn_channels, generator=generator)
    tensors["bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    return tensors


def lora_state_dict(seed: int, config: DiTConfig = TINY_DIT_CONFIG, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA in the raw official layout (``diffusion_model.<block Linear>.lora_A/lora_B``) on every block Linear."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in module_shapes(Ideogram4DiT, config).items():
        if is_block_linear_weight(name, shape):
            stem = "diffusion_model." + name[: -len(".weight")]
            tensors[stem + ".lora_A.weight"] = torch.randn((rank, shape[1]), generator=generator) / shape[1] ** 0.5
            tensors[stem + ".lora_B.weight"] = 0.1 * torch.randn((shape[0], rank), generator=generator)
    return tensors


def write_tiny_weights(models_dir, seed: int = 0, dit_format: str = "fp8") -> dict[str, pathlib.Path]:
    """Write the stand-in files under ``models_dir``; returns {"dit", "uncond_dit", "text_encoder", "lm_head",
    "vae", "lora"} -> path."""
    if dit_format not in ("fp8", "bf16"):
        raise ValueError(f"dit_format must be 'fp8' or 'bf16', got {dit_format!r}")
    models_dir = pathlib.Path(models_dir)
    fp8 = dit_format == "fp8"
    files = {
        "dit": (DIT_FILE, dit_state_dict(seed, fp8)),
        "uncond_dit": (UNCOND_DIT_FILE, dit_state_dict(seed + 1, fp8)),
        "text_encoder": (TEXT_ENCODER_FILE, text_encoder_state_dict(seed + 2)),
        "lm_head": (LM_HEAD_FILE, lm_head_state_dict(seed + 4)),
        "vae": (VAE_FILE, vae_state_dict(seed + 3)),
        "lora": (LORA_FILE, lora_state_dict(seed + 4)),
    }
    paths = {}
    for role, (relative, tensors) in files.items():
        path = models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        paths[role] = path
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write tiny random Ideogram 4 stand-in models (real layouts and names).")
    parser.add_argument("models_dir", type=pathlib.Path, help="a ComfyUI-style models folder to write into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dit-format", choices=("fp8", "bf16"), default="fp8")
    args = parser.parse_args(argv)
    for role, path in write_tiny_weights(args.models_dir, args.seed, args.dit_format).items():
        print(f"{role:13s} {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
