"""load_dit_checkpoint: every DiT file layout loads to the same model, configs are inferred alike, bad files fail.

Every layout is synthesised here with safetensors.torch.save_file from one random bf16 reference state dict in
official keys (tiny_dit.random_official_state_dict). The fp8 files are made with the quantisers written out
below from the spec, and the expected weights with the de-quantisation formulas written out below:

* official per-row (spec B.1): scale = rowmax|w| / 448 (fp32, (out,)), W = w.to(bf16) * scale.to(bf16)[:, None]
* ComfyUI per-tensor: scale = max|w| / 448 (fp32 scalar), W = w.to(bf16) * scale.float().to(bf16)
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_dit import TINY_CONFIG, official_to_diffusers_state_dict, random_official_state_dict

from ideogram4 import safetensors_io
from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_checkpoint import (
    SUPPORTED_LAYOUTS,
    CheckpointError,
    check_dit_pair,
    expected_dit_shapes,
    inspect_dit_checkpoint,
    load_dit_checkpoint,
    load_dit_pair,
)
from ideogram4.dit_config import DiTConfig
from ideogram4.velocity import conditional_velocity

BF16 = torch.bfloat16
COMFY_PREFIX = "model.diffusion_model."
# The published config.json (diffusers-style keys) of TINY_CONFIG.
TINY_CONFIG_JSON = {
    "_class_name": "Ideogram4Transformer2DModel",
    "_diffusers_version": "0.42.1",
    "num_layers": TINY_CONFIG.num_layers,
    "num_attention_heads": TINY_CONFIG.num_attention_heads,
    "attention_head_dim": TINY_CONFIG.attention_head_dim,
    "intermediate_size": TINY_CONFIG.intermediate_size,
    "adaln_dim": TINY_CONFIG.adaln_dim,
    "in_channels": TINY_CONFIG.in_channels,
    "llm_features_dim": TINY_CONFIG.llm_features_dim,
    "rope_theta": TINY_CONFIG.rope_theta,
    "mrope_section": list(TINY_CONFIG.mrope_section),
}


# ------------------------------------------------------------------------------------------------
# Reference weights and the file layouts
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """Random bf16 weights in official keys; Linear weights spread over several binades per row."""
    state = random_official_state_dict(TINY_CONFIG, seed=3, dtype=torch.float32)
    generator = torch.Generator().manual_seed(4)
    for key, value in state.items():
        if _is_linear_weight(key, value):
            row_gain = torch.exp(torch.randn(value.shape[0], 1, generator=generator))
            state[key] = value * row_gain
    return {key: value.to(BF16) for key, value in state.items()}


def _is_linear_weight(key, value):
    return key.endswith(".weight") and value.dim() == 2 and key != "embed_image_indicator.weight"


def _quantise_rowwise(weight):
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 448.0
    return (w / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def _quantise_per_tensor(weight):
    w = weight.float()
    scale = w.abs().amax().clamp(min=1e-12) / 448.0
    return (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale.reshape(())


def _official_fp8(reference):
    """The ideogram-ai/ideogram-4-fp8 layout: fp8 Linear weights + fp32 per-row weight_scale."""
    state = {}
    for key, value in reference.items():
        if _is_linear_weight(key, value):
            state[key], state[key[: -len("weight")] + "weight_scale"] = _quantise_rowwise(value)
        else:
            state[key] = value
    return state


def _expected_rowwise(fp8_state):
    expected = {}
    for key, value in fp8_state.items():
        if key.endswith(".weight_scale"):
            continue
        scale = fp8_state.get(key + "_scale")
        expected[key] = value.to(BF16) if scale is None else value.to(BF16) * scale.to(BF16)[:, None]
    return expected


def _comfy_quant_bytes(conf):
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def _comfy_fp8(reference, prefix="", input_scale=False):
    """The Comfy-Org *_fp8_scaled layout: fp8 weights, per-tensor weight_scale and a comfy_quant entry."""
    state = {}
    for key, value in reference.items():
        if _is_linear_weight(key, value):
            layer = key[: -len(".weight")]
            state[prefix + key], state[prefix + layer + ".weight_scale"] = _quantise_per_tensor(value)
            state[prefix + layer + ".comfy_quant"] = _comfy_quant_bytes({"format": "float8_e4m3fn"})
            if input_scale:
                state[prefix + layer + ".input_scale"] = torch.tensor(0.25)
        else:
            state[prefix + key] = value
    return state


def _expected_per_tensor(comfy_state, prefix=""):
    expected = {}
    for key, value in comfy_state.items():
        if key.endswith((".weight_scale", ".comfy_quant", ".input_scale")):
            continue
        scale = comfy_state.get(key + "_scale")
        local = key[len(prefix):]
        expected[local] = value.to(BF16) if scale is None else value.to(BF16) * scale.float().to(BF16)
    return expected


def _with_prefix(state, prefix):
    return {prefix + key: value for key, value in state.items()}


def _diffusers_fp8_rowwise(reference):
    """Per-row fp8 in diffusers keys: qkv's weight and scale split in row thirds, as [XDIT] does."""
    state = {}
    for key, value in official_to_diffusers_state_dict(_official_fp8(reference)).items():
        if key.endswith(".attention.qkv.weight_scale"):
            base = key[: -len("qkv.weight_scale")]
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3)):
                state[f"{base}{part}.weight_scale"] = chunk.clone()
        elif key.endswith(".attention.o.weight_scale"):
            state[key.replace(".attention.o.", ".attention.to_out.0.")] = value
        else:
            state[key] = value
    return state


def _save(state, path, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, str(path), metadata=metadata)
    return path


def _save_sharded(state, folder, shards=3):
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for index in range(shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[index::shards]
        save_file({key: state[key].contiguous() for key in part}, str(folder / name))
        weight_map.update({key: name for key in part})
    index_path = folder / "diffusion_pytorch_model.safetensors.index.json"
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index_path


# Each case: (file state, key prefix, expected official weights, expected layout).
def _layout_cases(reference):
    official_fp8 = _official_fp8(reference)
    comfy = _comfy_fp8(reference)
    comfy_prefixed = _comfy_fp8(reference, COMFY_PREFIX, input_scale=True)
    diffusers = official_to_diffusers_state_dict(reference)
    return {
        "official-bf16": (reference, reference, "official-bf16"),
        "official-fp8-rowwise": (official_fp8, _expected_rowwise(official_fp8), "official-fp8-rowwise"),
        "comfy-fp8-bare": (comfy, _expected_per_tensor(comfy), "comfy-fp8-scaled"),
        "comfy-fp8-prefixed": (comfy_prefixed, _expected_per_tensor(comfy_prefixed, COMFY_PREFIX),
                               "comfy-fp8-scaled"),
        "diffusers": (diffusers, reference, "diffusers"),
        "diffusers-transformer-prefix": (_with_prefix(diffusers, "transformer."), reference, "diffusers"),
        "diffusers-fp8-rowwise": (_diffusers_fp8_rowwise(reference), _expected_rowwise(official_fp8),
                                  "diffusers-fp8-rowwise"),
    }


LAYOUTS = ["official-bf16", "official-fp8-rowwise", "comfy-fp8-bare", "comfy-fp8-prefixed", "diffusers",
           "diffusers-transformer-prefix", "diffusers-fp8-rowwise"]


# ------------------------------------------------------------------------------------------------
# Identical outputs
# ------------------------------------------------------------------------------------------------


def _model(state_dict):
    model = Ideogram4DiT(TINY_CONFIG, dtype=BF16)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


_INPUTS = {}


def _velocity(state_dict):
    """The conditional velocity of a bf16 model on fixed inputs (two prompts of different lengths)."""
    if not _INPUTS:
        generator = torch.Generator().manual_seed(11)
        _INPUTS["z"] = torch.randn(2, 6, TINY_CONFIG.in_channels, generator=generator)
        _INPUTS["text"] = torch.randn(2, 5, TINY_CONFIG.llm_features_dim, generator=generator)
    with torch.no_grad():
        return conditional_velocity(_model(state_dict), _INPUTS["z"], 0.37, _INPUTS["text"], [5, 3], 2, 3)


def _assert_bitwise_equal(actual, expected):
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert torch.equal(actual[key], expected[key]), key


@pytest.fixture(scope="module")
def cases(reference):
    return _layout_cases(reference)


@pytest.fixture(scope="module")
def reference_velocities(cases):
    """Velocity of the model built directly from each distinct expected state dict."""
    cache = {}
    for name, (_, expected, _) in cases.items():
        key = id(expected)
        if key not in cache:
            cache[key] = _velocity(expected)
    return {name: cache[id(expected)] for name, (_, expected, _) in cases.items()}


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_loads_to_identical_outputs(name, cases, reference_velocities, tmp_path):
    state, expected, layout = cases[name]
    path = _save(state, tmp_path / f"{name}.safetensors")
    checkpoint = load_dit_checkpoint(path)
    assert checkpoint.layout == layout
    assert checkpoint.config == TINY_CONFIG and checkpoint.config_source == "shapes"
    assert checkpoint.path == str(path)
    _assert_bitwise_equal(checkpoint.state_dict, {key: expected[key] for key in expected_dit_shapes(TINY_CONFIG)})
    velocity = _velocity(checkpoint.state_dict)
    assert torch.isfinite(velocity).all()
    assert torch.equal(velocity, reference_velocities[name])


def test_fp8_layouts_really_differ_from_the_bf16_reference(cases, reference_velocities):
    """Guards the test above: the fp8 files are compared against their own de-quantised weights, not bf16."""
    for name in ("official-fp8-rowwise", "comfy-fp8-bare"):
        assert not torch.equal(reference_velocities[name], reference_velocities["official-bf16"])
    assert not torch.equal(reference_velocities["official-fp8-rowwise"], reference_velocities["comfy-fp8-bare"])


@pytest.mark.parametrize("name", ["official-bf16", "comfy-fp8-prefixed", "diffusers-transformer-prefix"])
def test_sharded_checkpoints_load_from_index_shard_or_folder(name, cases, tmp_path):
    state, expected, layout = cases[name]
    index = _save_sharded(state, tmp_path / "transformer")
    wanted = {key: expected[key] for key in expected_dit_shapes(TINY_CONFIG)}
    for path in (index, tmp_path / "transformer", tmp_path / "transformer" /
                 "diffusion_pytorch_model-00002-of-00003.safetensors"):
        checkpoint = load_dit_checkpoint(path)
        assert checkpoint.layout == layout + "+sharded"
        _assert_bitwise_equal(checkpoint.state_dict, wanted)


def test_other_key_prefixes_are_found_by_the_marker_key(reference, tmp_path):
    path = _save(_with_prefix(reference, "conditional_transformer."), tmp_path / "m.safetensors")
    checkpoint = load_dit_checkpoint(path)
    assert checkpoint.layout == "official-bf16"
    _assert_bitwise_equal(checkpoint.state_dict, {key: reference[key] for key in expected_dit_shapes(TINY_CONFIG)})
    both = {**_with_prefix(reference, "a."), **{"b." + key: value.clone() for key, value in reference.items()}}
    with pytest.raises(CheckpointError, match="several DiTs"):
        load_dit_checkpoint(_save(both, tmp_path / "two.safetensors"))


def test_legacy_comfy_scaled_fp8_marker_matches_comfy_quant(reference, cases, tmp_path):
    """ComfyUI's older form (scaled_fp8 marker, .scale_weight) means the same as comfy_quant + weight_scale."""
    legacy = {COMFY_PREFIX + "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in cases["comfy-fp8-bare"][0].items():
        if key.endswith(".comfy_quant"):
            continue
        legacy[COMFY_PREFIX + key.replace(".weight_scale", ".scale_weight")] = value
    checkpoint = load_dit_checkpoint(_save(legacy, tmp_path / "legacy.safetensors"))
    assert checkpoint.layout == "comfy-fp8-scaled"
    _assert_bitwise_equal(checkpoint.state_dict, {k: cases["comfy-fp8-bare"][1][k] for k in checkpoint.state_dict})


# ------------------------------------------------------------------------------------------------
# keep_fp8 and dtype
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["official-fp8-rowwise", "comfy-fp8-prefixed", "diffusers-fp8-rowwise"])
def test_keep_fp8_gives_per_row_scales_that_reproduce_the_default(name, cases, tmp_path):
    state, _, _ = cases[name]
    path = _save(state, tmp_path / "m.safetensors")
    default = load_dit_checkpoint(path).state_dict
    kept = load_dit_checkpoint(path, keep_quantized=True).state_dict
    for key, value in default.items():
        layer = key[: -len(".weight")]
        if layer + ".weight_scale" not in kept:
            assert torch.equal(kept[key], value), key
            continue
        weight, scale = kept[key], kept[layer + ".weight_scale"]
        assert weight.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
        assert scale.shape == (weight.shape[0],)
        assert torch.equal(weight.to(BF16) * scale.to(BF16)[:, None], value), key
    quantised = [key for key in kept if key.endswith(".weight_scale")]
    assert len(quantised) == 7 + 6 * TINY_CONFIG.num_layers  # every Linear of spec B.3
    if name == "comfy-fp8-prefixed":
        assert kept["layers.0.attention.qkv.input_scale"].item() == 0.25


def test_keep_fp8_concatenates_different_per_tensor_scales_of_split_qkv(reference, tmp_path):
    """A diffusers file with per-tensor comfy scales per to_q/to_k/to_v still fuses exactly via per-row scales."""
    state = _comfy_fp8(official_to_diffusers_state_dict(reference))
    path = _save(state, tmp_path / "m.safetensors")
    default = load_dit_checkpoint(path)
    kept = load_dit_checkpoint(path, keep_quantized=True).state_dict
    assert default.layout == "diffusers-fp8-scaled"
    scale = kept["layers.0.attention.qkv.weight_scale"]
    assert len(torch.unique(scale)) == 3
    rebuilt = kept["layers.0.attention.qkv.weight"].to(BF16) * scale.to(BF16)[:, None]
    assert torch.equal(rebuilt, default.state_dict["layers.0.attention.qkv.weight"])
    q = state["layers.0.attention.to_q.weight"].to(BF16) * state["layers.0.attention.to_q.weight_scale"].to(BF16)
    assert torch.equal(default.state_dict["layers.0.attention.qkv.weight"][: TINY_CONFIG.hidden_size], q)


def test_dtype_casts_unquantised_tensors_and_none_keeps_file_dtypes(reference, tmp_path):
    fp32 = {key: value.float() for key, value in reference.items()}
    path = _save(fp32, tmp_path / "fp32.safetensors")
    kept = load_dit_checkpoint(path, dtype=None)
    assert kept.layout == "official-fp32"
    _assert_bitwise_equal(kept.state_dict, {key: fp32[key] for key in expected_dit_shapes(TINY_CONFIG)})
    cast = load_dit_checkpoint(path).state_dict
    assert all(value.dtype == BF16 for value in cast.values())
    fp16 = load_dit_checkpoint(path, dtype=torch.float16).state_dict
    assert torch.equal(fp16["input_proj.weight"], fp32["input_proj.weight"].half())


def test_fp8_dequantises_to_the_requested_dtype(cases, tmp_path):
    state, _, _ = cases["official-fp8-rowwise"]
    path = _save(state, tmp_path / "m.safetensors")
    loaded = load_dit_checkpoint(path, dtype=torch.float32).state_dict
    weight, scale = state["layers.1.feed_forward.w2.weight"], state["layers.1.feed_forward.w2.weight_scale"]
    assert torch.equal(loaded["layers.1.feed_forward.w2.weight"], weight.float() * scale[:, None])
    assert loaded["layers.1.ffn_norm1.weight"].dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_expected_shapes_match_the_model_and_the_spec_parameter_counts():
    model_shapes = {key: tuple(value.shape)
                    for key, value in Ideogram4DiT(TINY_CONFIG, device="meta").state_dict().items()}
    assert expected_dit_shapes(TINY_CONFIG) == model_shapes
    # Spec A.1: 264 278 528 parameters per block, 293 818 496 outside the blocks for the released config.
    released = expected_dit_shapes(DiTConfig())
    block = sum(torch.Size(shape).numel() for key, shape in released.items() if key.startswith("layers.0."))
    total = sum(torch.Size(shape).numel() for shape in released.values())
    assert (block, total - 34 * block) == (264_278_528, 293_818_496)


def test_config_from_metadata_config_json_and_shapes_agree(reference, tmp_path):
    from_shapes = inspect_dit_checkpoint(_save(reference, tmp_path / "a" / "m.safetensors"))
    from_json_path = _save(reference, tmp_path / "b" / "diffusion_pytorch_model.safetensors")
    (from_json_path.parent / "config.json").write_text(json.dumps(TINY_CONFIG_JSON))
    from_json = inspect_dit_checkpoint(from_json_path)
    from_metadata = inspect_dit_checkpoint(
        _save(reference, tmp_path / "c" / "m.safetensors", metadata={"config": json.dumps(TINY_CONFIG_JSON)}))
    assert [info.config_source for info in (from_metadata, from_json, from_shapes)] == \
        ["metadata", "config.json", "shapes"]
    assert from_metadata.config == from_json.config == from_shapes.config == TINY_CONFIG


def test_metadata_config_is_preferred_and_carries_what_shapes_cannot(reference, tmp_path):
    config = dict(TINY_CONFIG_JSON, rope_theta=10000.0)
    path = _save(reference, tmp_path / "m.safetensors", metadata={"config": json.dumps(config)})
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_CONFIG_JSON, rope_theta=123.0)))
    info = inspect_dit_checkpoint(path)
    assert info.config_source == "metadata" and info.config.rope_theta == 10000.0


def test_config_json_of_another_model_is_ignored(reference, tmp_path):
    path = _save(reference, tmp_path / "m.safetensors")
    vae_config = {"_class_name": "AutoencoderKLFlux2", "in_channels": 3, "latent_channels": 32}
    (tmp_path / "config.json").write_text(json.dumps(vae_config))
    info = inspect_dit_checkpoint(path)
    assert info.config_source == "shapes" and info.config == TINY_CONFIG


def _write_sparse_safetensors(path, entries):
    """A valid safetensors file of {key: (dtype name, shape, bytes per element)} whose data region is a hole
    (sparse), so the released 9.3 GB layout costs no disk or time."""
    header, offset = {}, 0
    for key, (dtype, shape, itemsize) in entries.items():
        size = itemsize
        for dim in shape:
            size *= dim
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode("utf-8")
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def test_released_model_config_is_inferred_from_the_header_alone(tmp_path, monkeypatch):
    """The released fp8 layout (spec B.1/B.3): 9 279 288 448 parameters (spec A.1) -> the released config,
    with no tensor read."""
    entries = {}
    for key, shape in expected_dit_shapes(DiTConfig()).items():
        if key.endswith(".weight") and len(shape) == 2 and key != "embed_image_indicator.weight":
            entries[key] = ("F8_E4M3", shape, 1)
            entries[key + "_scale"] = ("F32", shape[:1], 4)
        else:
            entries[key] = ("BF16", shape, 2)
    parameters = sum(torch.Size(shape).numel() for key, (_, shape, _) in entries.items()
                     if not key.endswith("_scale"))
    assert parameters == 9_279_288_448
    path = _write_sparse_safetensors(tmp_path / "ideogram4_fp8.safetensors", entries)

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("config inference must use the header only")

    monkeypatch.setattr(safetensors_io, "safe_open", no_tensor_reads)
    info = inspect_dit_checkpoint(path)
    assert info.config == DiTConfig() and info.config_source == "shapes"
    assert info.layout == "official-fp8-rowwise"
    assert info.shapes["layers.33.attention.qkv.weight"] == (13824, 4608)


# ------------------------------------------------------------------------------------------------
# Pairs
# ------------------------------------------------------------------------------------------------


def test_load_dit_pair_accepts_matching_files_in_different_layouts(cases, tmp_path):
    cond = _save(cases["comfy-fp8-bare"][0], tmp_path / "ideogram4_fp8_scaled.safetensors")
    uncond = _save(cases["official-bf16"][0], tmp_path / "ideogram4_unconditional.safetensors")
    first, second = load_dit_pair(cond, uncond)
    assert first.config == second.config == TINY_CONFIG
    assert (first.layout, second.layout) == ("comfy-fp8-scaled", "official-bf16")
    _assert_bitwise_equal(second.state_dict, {k: cases["official-bf16"][1][k] for k in first.state_dict})


def test_load_dit_pair_refuses_different_shapes_before_reading_weights(reference, tmp_path, monkeypatch):
    cond = _save(reference, tmp_path / "cond.safetensors")
    other = random_official_state_dict(DiTConfig(**{**TINY_CONFIG.__dict__, "intermediate_size": 64}), dtype=BF16)
    uncond = _save(other, tmp_path / "uncond.safetensors")

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("the pair must be checked on the headers")

    monkeypatch.setattr(safetensors_io, "safe_open", no_tensor_reads)
    with pytest.raises(CheckpointError) as info:
        load_dit_pair(cond, uncond)
    message = str(info.value)
    assert str(cond) in message and str(uncond) in message
    assert "'layers.0.feed_forward.w1.weight': [256, 128] vs [64, 128]" in message


def test_load_dit_pair_refuses_a_different_layer_count(reference, tmp_path):
    cond = _save(reference, tmp_path / "cond.safetensors")
    deeper = random_official_state_dict(DiTConfig(**{**TINY_CONFIG.__dict__, "num_layers": 3}), dtype=BF16)
    uncond = _save(deeper, tmp_path / "uncond.safetensors")
    with pytest.raises(CheckpointError, match=r"'layers\.2\.attention\.qkv\.weight': absent vs \[384, 128\]"):
        load_dit_pair(cond, uncond)


# ------------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------------


def _assert_names_file_and_layouts(message, path):
    assert str(path) in message
    assert "Supported: Ideogram 4 transformer .safetensors" in message and "diffusers layout" in message
    # Concise: file name, what was found and what to do, then one short sentence of supported layouts (that list
    # alone used to be ~330 characters).
    assert message.endswith(SUPPORTED_LAYOUTS) and len(SUPPORTED_LAYOUTS) < 150


@pytest.mark.parametrize("keys, looks_like", [
    (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.0.in_layers.0.weight"],
     "Stable Diffusion / SDXL UNet"),
    (["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"], "text encoder"),
    (["decoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight", "bn.running_mean"], "VAE"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "FLUX transformer"),
    (["foo.weight", "bar.bias"], "unrecognised state dict"),
])
def test_other_models_are_refused_saying_what_they_look_like(keys, looks_like, tmp_path):
    path = _save({key: torch.zeros(2, 2) for key in keys}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not an Ideogram 4 DiT checkpoint") as info:
        load_dit_checkpoint(path)
    assert looks_like in str(info.value) and keys[0] in str(info.value)
    _assert_names_file_and_layouts(str(info.value), path)


def test_wrong_shape_names_key_expected_and_found(reference, tmp_path):
    state = dict(reference)
    state["layers.1.feed_forward.w1.weight"] = torch.zeros(200, 128, dtype=BF16)
    path = _save(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_dit_checkpoint(path)
    message = str(info.value)
    assert "shape mismatch for 'layers.1.feed_forward.w1.weight'" in message
    assert "expected [256, 128]" in message and "found [200, 128]" in message
    _assert_names_file_and_layouts(message, path)


def test_wrong_shape_for_a_metadata_config_names_the_source(reference, tmp_path):
    config = dict(TINY_CONFIG_JSON, in_channels=64)
    path = _save(reference, tmp_path / "m.safetensors", metadata={"config": json.dumps(config)})
    pattern = r"'input_proj.weight'.*expected \[128, 64\].*metadata.*found \[128, 128\]"
    with pytest.raises(CheckpointError, match=pattern):
        load_dit_checkpoint(path)


def test_wrong_per_row_scale_shape(cases, tmp_path):
    state = dict(cases["official-fp8-rowwise"][0])
    state["layers.0.attention.o.weight_scale"] = torch.ones(7)
    path = _save(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"'layers.0.attention.o.weight_scale'.*\(128,\).*found \[7\]"):
        load_dit_checkpoint(path)


def test_scale_without_its_weight(cases, tmp_path):
    state = {key: value for key, value in cases["official-fp8-rowwise"][0].items() if key != "adaln_proj.weight"}
    path = _save(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="adaln_proj.weight_scale") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


def test_missing_tensor(reference, tmp_path):
    state = {key: value for key, value in reference.items() if key != "layers.1.attention.norm_k.weight"}
    path = _save(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) missing.*layers.1.attention.norm_k.weight") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


def test_truncated_file(reference, tmp_path):
    path = _save(reference, tmp_path / "ideogram4_fp8_scaled.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


def test_missing_file(tmp_path):
    path = tmp_path / "diffusion_models" / "ideogram4_fp8_scaled.safetensors"
    with pytest.raises(CheckpointError, match="no such file") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_paths_are_refused(suffix, tmp_path):
    path = tmp_path / f"ideogram4{suffix}"
    path.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="pickle") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


def test_incomplete_nf4_weight_is_refused(reference, tmp_path):
    state = dict(reference)
    state["layers.0.attention.qkv.weight.absmax"] = torch.ones(4)
    state["layers.0.attention.qkv.weight.quant_state.bitsandbytes__nf4"] = torch.zeros(4, dtype=torch.uint8)
    path = _save(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="bitsandbytes weight 'layers.0.attention.qkv.weight' lacks its "
                                              "quant_map") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


def test_unsupported_comfy_quant_format_is_named(cases, tmp_path):
    state = dict(cases["comfy-fp8-bare"][0])
    state["layers.0.attention.o.comfy_quant"] = _comfy_quant_bytes({"format": "convrot_w4a4"})
    path = _save(state, tmp_path / "ideogram4_w4a4.safetensors")
    with pytest.raises(CheckpointError, match="'layers.0.attention.o'.*'convrot_w4a4', which this pack does not "
                                              "read") as info:
        load_dit_checkpoint(path)
    _assert_names_file_and_layouts(str(info.value), path)


def test_comfy_fp8_weights_stored_as_bytes_load_like_fp8(cases, tmp_path):
    """Older ComfyUI files keep the fp8 weights of comfy_quant layers as uint8 bytes; the DiT reads them as the text
    encoder always has (one sidecar reader for both)."""
    state = dict(cases["comfy-fp8-bare"][0])
    as_bytes = {key: value.view(torch.uint8) if value.dtype == torch.float8_e4m3fn else value
                for key, value in state.items()}
    expected = load_dit_checkpoint(_save(state, tmp_path / "fp8.safetensors"), dtype=torch.float32).state_dict
    loaded = load_dit_checkpoint(_save(as_bytes, tmp_path / "bytes.safetensors"), dtype=torch.float32).state_dict
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_check_dit_pair_refuses_the_same_file_twice_from_the_headers(reference, tmp_path):
    path = _save(reference, tmp_path / "ideogram4_fp8_scaled.safetensors")
    with pytest.raises(CheckpointError, match=r"the same file \(.*ideogram4_fp8_scaled\.safetensors\)"):
        check_dit_pair(path, tmp_path / "." / "ideogram4_fp8_scaled.safetensors")


def test_check_dit_pair_reads_headers_only_and_returns_both_configs(reference, tmp_path):
    cond = _save(reference, tmp_path / "cond.safetensors", metadata={"modelspec.title": "unconditional"})
    uncond = _save(reference, tmp_path / "uncond.safetensors")
    cond_info, uncond_info = check_dit_pair(cond, uncond)
    assert cond_info.config == uncond_info.config == TINY_CONFIG
    assert cond_info.metadata["modelspec.title"] == "unconditional"
