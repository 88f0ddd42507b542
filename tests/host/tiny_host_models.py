"""Tiny random Ideogram 4 weights written in the real file layouts, for the in-process host tests.

Shapes are tiny but every structure is real: a 36-layer Qwen3-VL language model (tap 35 must exist) with the real
vocabulary size (the real tokenizer's ids), a 2-layer DiT whose text width equals the encoder's 13 taps, and a
FLUX.2-style VAE with 32 latent channels and 8x downscale. Weights come from the ideogram4 modules' own state
dicts, so the key names are the ones the loaders read from the published files.

The pieces (shapes, random weights, fp8 storage) are tools/make_tiny_weights.py's; this module adds the variants
the in-process tests compare: float32 files and the official fp8 row-wise layout, under names of their own.
"""

from __future__ import annotations

import pathlib

import torch
from safetensors.torch import save_file

from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_config import DiTConfig
from ideogram4.text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder
from ideogram4.vae import Flux2AutoEncoder, VAEConfig
from tools.make_tiny_weights import module_shapes, random_tensors, store_official_fp8_rowwise

TEXT_CONFIG = Qwen3VLTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=36, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=8)
DIT_CONFIG = DiTConfig(num_layers=2, num_attention_heads=2, attention_head_dim=64, intermediate_size=256,
                       adaln_dim=32, in_channels=128, llm_features_dim=TEXT_CONFIG.features_dim,
                       mrope_section=(12, 10, 10))
VAE_CONFIG = VAEConfig(encoder_channels=(32, 32, 32, 32), decoder_channels=(32, 32, 32, 32),
                       encoder_blocks_per_level=1, decoder_blocks_per_level=1)

COND_FILE = "ideogram4_tiny_cond.safetensors"
UNCOND_FILE = "ideogram4_tiny_uncond.safetensors"
COND_FP8_FILE = "ideogram4_tiny_cond_fp8_rowwise.safetensors"
UNCOND_FP8_FILE = "ideogram4_tiny_uncond_fp8_rowwise.safetensors"
TEXT_ENCODER_FILE = "qwen3vl_tiny.safetensors"
VAE_FILE = "flux2_vae_tiny.safetensors"


def _random_float32(module_class, config, seed: int) -> dict[str, torch.Tensor]:
    # Embeddings scaled like any other matrix (embedding_std=None): these files predate the shared builder's
    # embedding rule, and the tests' weights stay what they were.
    return random_tensors(module_shapes(module_class, config), torch.Generator().manual_seed(seed), embedding_std=None)


def dit_state_dict(seed: int, config: DiTConfig = DIT_CONFIG) -> dict[str, torch.Tensor]:
    state = _random_float32(Ideogram4DiT, config, seed)
    state["embed_image_indicator.weight"] = state["embed_image_indicator.weight"] * 5.0  # N(0, 0.5^2)-ish
    # Velocities of O(1) like the real model (not O(10)), so latents stay O(1) through sampling.
    state["final_layer.linear.weight"] = state["final_layer.linear.weight"] * 0.1
    return state


def text_encoder_state_dict(seed: int = 11) -> dict[str, torch.Tensor]:
    return _random_float32(Qwen3VLTextEncoder, TEXT_CONFIG, seed)


def vae_state_dict(seed: int = 21) -> dict[str, torch.Tensor]:
    return _random_float32(Flux2AutoEncoder, VAE_CONFIG, seed)


def write_models(models_dir: pathlib.Path) -> pathlib.Path:
    """Write every tiny model under ``models_dir/{diffusion_models,text_encoders,vae}`` and an empty ``loras``
    folder (tests put their LoRA files there); returns ``models_dir``."""
    dit_dir, te_dir, vae_dir, lora_dir = (models_dir / name for name in ("diffusion_models", "text_encoders", "vae",
                                                                          "loras"))
    for folder in (dit_dir, te_dir, vae_dir, lora_dir):
        folder.mkdir(parents=True, exist_ok=True)
    cond, uncond = dit_state_dict(seed=1), dit_state_dict(seed=2)
    save_file(cond, str(dit_dir / COND_FILE))
    save_file(uncond, str(dit_dir / UNCOND_FILE))
    save_file(store_official_fp8_rowwise(cond), str(dit_dir / COND_FP8_FILE))
    save_file(store_official_fp8_rowwise(uncond), str(dit_dir / UNCOND_FP8_FILE))
    # The Hugging Face Qwen3VLForConditionalGeneration prefix, as in the published text_encoder/ folders.
    te = {f"model.language_model.{k}": v for k, v in text_encoder_state_dict().items()}
    save_file(te, str(te_dir / TEXT_ENCODER_FILE))
    vae = vae_state_dict()
    vae["bn.running_mean"] = torch.zeros(4 * VAE_CONFIG.latent_channels)  # present in real FLUX.2 files
    vae["bn.running_var"] = torch.ones(4 * VAE_CONFIG.latent_channels)
    save_file(vae, str(vae_dir / VAE_FILE))
    return models_dir
