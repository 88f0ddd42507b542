"""A tiny random Qwen3-VL for the text-encoder tests, and transformers' tapped hidden states as the oracle.

36 decoder layers (tap 35 must exist), hidden 32, 4 query / 2 KV heads, head dim 8 and the real 151936-token
vocabulary (real token ids work). Every parameter, RMSNorm weights included, is randomised so that swapped or
skipped weights show; the scales keep hidden states O(1-10) over 36 layers, so float32 round-off between
differently shaped (batched/padded) computations stays well below the tests' 1e-5 tolerance.
"""

import torch
import transformers

from ideogram4.constants import QWEN3_VL_ACTIVATION_LAYERS


def tiny_qwen3_vl(seed: int = 0):
    """A random fp32 Qwen3VLForConditionalGeneration (SDPA attention) with a 36-layer tiny language model."""
    config = transformers.Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=36, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           deepstack_visual_indexes=[0], num_position_embeddings=16),
    )
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = transformers.Qwen3VLForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name:
                parameter.copy_(1.0 + 0.2 * noise)
            else:
                parameter.copy_((1.0 if "embed_tokens" in name else 0.1) * noise)
    return model


def tapped_hidden_states(model, input_ids, attention_mask=None, position_ids=None):
    """Outputs of the tapped decoder layers from transformers' own forward: 13 x (B, L, hidden)."""
    language_model = model.model.language_model
    captured = {}
    handles = [
        language_model.layers[index].register_forward_hook(
            lambda module, args, output, index=index: captured.__setitem__(index, output)
        )
        for index in QWEN3_VL_ACTIVATION_LAYERS
    ]
    try:
        with torch.no_grad():
            language_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[index] for index in QWEN3_VL_ACTIVATION_LAYERS]


HF_TEXT_PREFIX = "model.language_model."


def pack_generation_model(model):
    """The pack's encoder and LM head (:mod:`ideogram4.text_generation`) holding ``model``'s language-model
    weights (float32, eval)."""
    from ideogram4.text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder
    from ideogram4.text_generation import Qwen3VLLanguageModelHead

    config = Qwen3VLTextConfig.from_hf_config(model.config.to_dict())
    state = {key[len(HF_TEXT_PREFIX):]: value for key, value in model.state_dict().items()
             if key.startswith(HF_TEXT_PREFIX)}
    encoder = Qwen3VLTextEncoder(config, dtype=torch.float32)
    encoder.load_state_dict({key: value for key, value in state.items() if key in encoder.state_dict()}, strict=True)
    head = Qwen3VLLanguageModelHead(config, dtype=torch.float32)
    head.load_state_dict({"norm.weight": state["norm.weight"], "lm_head.weight": model.lm_head.weight}, strict=True)
    return encoder.eval(), head.eval()
