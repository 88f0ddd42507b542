"""ideogram4.lora: every trainer's key layout maps to the official weights, checked against diffusers' own module
names and hand-written expectations. (That the mapped patches give diffusers' velocities is checked through ComfyUI
in tests/host/test_inprocess_lora.py.)"""

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from tiny_dit import TINY_CONFIG, official_to_diffusers_state_dict, random_official_state_dict

from ideogram4.dit import Ideogram4DiT
from ideogram4.lora import LoraFormatError, map_lora_keys, module_aliases, read_lora_file

HIDDEN = TINY_CONFIG.num_attention_heads * TINY_CONFIG.attention_head_dim
SHAPES = {key: tuple(value.shape) for key, value in Ideogram4DiT(TINY_CONFIG).state_dict().items()}
QKV = "layers.1.attention.qkv.weight"


def pair(stem, out_features, in_features, rank=2, down="lora_A.weight", up="lora_B.weight"):
    return {f"{stem}.{down}": torch.ones(rank, in_features), f"{stem}.{up}": torch.ones(out_features, rank)}


@pytest.mark.parametrize("stem, target", [
    ("diffusion_model.layers.1.attention.qkv", QKV),                                  # ai-toolkit
    ("layers.1.attention.qkv", QKV),                                                  # raw official
    ("transformer.layers.1.attention.to_q", (QKV, (0, 0, HIDDEN))),                    # diffusers
    ("transformer.layers.1.attention.to_k", (QKV, (0, HIDDEN, HIDDEN))),
    ("base_model.model.layers.1.attention.to_v", (QKV, (0, 2 * HIDDEN, HIDDEN))),      # PEFT save_pretrained
    ("transformer.layers.0.attention.to_out.0", "layers.0.attention.o.weight"),
    ("model.layers.0.feed_forward.w2", "layers.0.feed_forward.w2.weight"),
    ("conditional_transformer.layers.0.adaln_modulation", "layers.0.adaln_modulation.weight"),
    ("lora_unet_layers_0_feed_forward_w3", "layers.0.feed_forward.w3.weight"),          # kohya
    ("lora_unet_layers_1_attention_to_out_0", "layers.1.attention.o.weight"),
    ("lycoris_layers_1_attention_to_k", (QKV, (0, HIDDEN, HIDDEN))),                  # SimpleTuner LyCORIS
    ("diffusion_model.t_embedding.mlp_in", "t_embedding.mlp_in.weight"),              # embedders
    ("transformer.final_layer.adaln_modulation", "final_layer.adaln_modulation.weight"),
    ("lora_unet_llm_cond_proj", "llm_cond_proj.weight"),
])
def test_every_naming_maps_to_the_official_weight(stem, target):
    weight_key = target if isinstance(target, str) else target[0]
    rows = SHAPES[weight_key][0] if isinstance(target, str) else target[1][2]
    result = map_lora_keys(pair(stem, rows, SHAPES[weight_key][1]), SHAPES)
    assert result.key_map == {stem: target}
    assert result.unmapped == []


def test_split_qkv_slices_are_diffusers_row_thirds():
    """The q/k/v targets cut the fused weight exactly where diffusers' to_q/to_k/to_v weights come from."""
    official = random_official_state_dict(TINY_CONFIG, seed=3)
    diffusers = official_to_diffusers_state_dict(official)
    from diffusers import Ideogram4Transformer2DModel

    oracle_keys = set(Ideogram4Transformer2DModel(
        in_channels=TINY_CONFIG.in_channels, num_layers=TINY_CONFIG.num_layers,
        attention_head_dim=TINY_CONFIG.attention_head_dim, num_attention_heads=TINY_CONFIG.num_attention_heads,
        intermediate_size=TINY_CONFIG.intermediate_size, adaln_dim=TINY_CONFIG.adaln_dim,
        llm_features_dim=TINY_CONFIG.llm_features_dim, mrope_section=TINY_CONFIG.mrope_section).state_dict())
    assert set(diffusers) == oracle_keys
    aliases = module_aliases(SHAPES)
    for key in oracle_keys:
        module = key[: -len(".weight")]
        if not key.endswith(".weight"):
            continue
        target = aliases[module]  # every diffusers module name resolves
        if isinstance(target, tuple):
            weight_key, (dim, offset, size) = target
            expected = official[weight_key].narrow(dim, offset, size)
        else:
            expected = official[target]
        assert torch.equal(diffusers[key], expected), key


def test_adapter_families_pass_through_under_their_stems():
    stem = "lycoris_layers_0_attention_qkv"
    state = {f"{stem}.lokr_w1": torch.ones(2, 2), f"{stem}.lokr_w2": torch.ones(3 * HIDDEN // 2, HIDDEN // 2),
             f"{stem}.alpha": torch.tensor(4.0),
             "lycoris_layers_0_feed_forward_w1.hada_w1_a": torch.ones(256, 2),
             "lycoris_layers_0_feed_forward_w1.hada_w1_b": torch.ones(2, HIDDEN),
             "lycoris_layers_0_feed_forward_w1.hada_w2_a": torch.ones(256, 2),
             "lycoris_layers_0_feed_forward_w1.hada_w2_b": torch.ones(2, HIDDEN),
             "diffusion_model.final_layer.linear.diff": torch.ones(128, HIDDEN),
             "diffusion_model.final_layer.linear.diff_b": torch.ones(128)}
    result = map_lora_keys(state, SHAPES)
    assert result.tensors.keys() == state.keys()
    assert result.key_map == {stem: "layers.0.attention.qkv.weight",
                              "lycoris_layers_0_feed_forward_w1": "layers.0.feed_forward.w1.weight",
                              "diffusion_model.final_layer.linear": "final_layer.linear.weight"}
    assert result.families == ["LyCORIS LoHa", "LyCORIS LoKr", "full-weight diff"]


def test_peft_dora_magnitude_becomes_a_row_dora_scale():
    stem = "transformer.layers.0.feed_forward.w1"
    state = {**pair(stem, 256, HIDDEN), f"{stem}.lora_magnitude_vector": torch.arange(256.0)}
    result = map_lora_keys(state, SHAPES)
    assert torch.equal(result.tensors[f"{stem}.dora_scale"], torch.arange(256.0).reshape(256, 1))
    assert f"{stem}.lora_magnitude_vector" not in result.tensors


def test_unmapped_keys_are_listed_and_counted():
    state = {**pair("layers.0.feed_forward.w1", 256, HIDDEN),
             **pair("text_encoder.layers.0.mlp.fc1", 4, 4),
             **pair("layers.7.attention.qkv", 3 * HIDDEN, HIDDEN),  # the tiny model has 2 layers
             "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)}
    result = map_lora_keys(state, SHAPES)
    assert set(result.key_map) == {"layers.0.feed_forward.w1"}
    assert result.unmapped == sorted(set(state) - {"layers.0.feed_forward.w1.lora_A.weight",
                                                   "layers.0.feed_forward.w1.lora_B.weight"})
    assert result.describe_unmapped(shown=2) == (f"5 keys, e.g.: {result.unmapped[0]}, {result.unmapped[1]}")


def test_a_file_where_nothing_maps_is_an_error_naming_keys_and_formats():
    state = pair("lora_te1_text_model_encoder_layers_0_mlp_fc1", 4, 4, down="lora_down.weight", up="lora_up.weight")
    with pytest.raises(LoraFormatError, match=r"lora_te1_text_model_encoder_layers_0_mlp_fc1\.lora_down\.weight.*"
                                              r"Understood: official module names.*kohya"):
        map_lora_keys(state, SHAPES)


def test_peft_config_gives_alpha_per_module():
    config = {"r": 2, "lora_alpha": 8, "alpha_pattern": {"feed_forward.w2": 3}, "rank_pattern": {}}
    state = {**pair("base_model.model.layers.0.feed_forward.w1", 256, HIDDEN),
             **pair("base_model.model.layers.0.feed_forward.w2", HIDDEN, 256),
             **pair("base_model.model.layers.1.feed_forward.w1", 256, HIDDEN),
             "base_model.model.layers.1.feed_forward.w1.alpha": torch.tensor(5.0)}
    result = map_lora_keys(state, SHAPES, adapter_config=config)
    alphas = {key: value.item() for key, value in result.tensors.items() if key.endswith(".alpha")}
    assert alphas == {"base_model.model.layers.0.feed_forward.w1.alpha": 8.0,
                      "base_model.model.layers.0.feed_forward.w2.alpha": 3.0,
                      "base_model.model.layers.1.feed_forward.w1.alpha": 5.0}  # the file's own alpha wins
    rslora = map_lora_keys(pair("layers.0.feed_forward.w1", 256, HIDDEN, rank=4), SHAPES,
                           adapter_config={"r": 4, "lora_alpha": 8, "use_rslora": True})
    # ComfyUI scales by alpha / rank; rsLoRA scales by lora_alpha / sqrt(rank).
    assert rslora.tensors["layers.0.feed_forward.w1.alpha"].item() / 4 == pytest.approx(8 / math.sqrt(4))


def test_read_lora_file_finds_the_adapter_config(tmp_path):
    tensors = pair("transformer.layers.0.feed_forward.w1", 256, HIDDEN)
    save_file(tensors, str(tmp_path / "with_metadata.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"transformer.r": 2, "transformer.lora_alpha": 6})})
    _, config = read_lora_file(tmp_path / "with_metadata.safetensors")
    assert config == {"r": 2, "lora_alpha": 6}
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    save_file(tensors, str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    loaded, config = read_lora_file(peft_dir / "adapter_model.safetensors")
    assert config == {"r": 2, "lora_alpha": 4} and loaded.keys() == tensors.keys()
    (peft_dir / "adapter_config.json").write_text("{r: 2")
    with pytest.raises(LoraFormatError, match="adapter_config.json: not valid JSON"):
        read_lora_file(peft_dir / "adapter_model.safetensors")
