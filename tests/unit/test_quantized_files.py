"""The quantised DiT files the core reads (ideogram4.dit_checkpoint with ideogram4.gguf_io): GGUF written with gguf's
GGUFWriter and bitsandbytes nf4 (official and diffusers layouts) load to the weights the format's own de-quantisation
gives, keep_quantized keeps them as stored, and files the pack cannot read are refused naming the file, what was
found and what to use instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ideogram4.dit import Ideogram4DiT
from ideogram4.dit_checkpoint import load_dit_checkpoint
from ideogram4.dit_config import DiTConfig
from ideogram4.safetensors_io import CheckpointError
from tools.make_tiny_weights import module_shapes, random_tensors
from tools.quantized_weights import gguf_dit_types, store_nf4, write_gguf

gguf = pytest.importorskip("gguf")

CONFIG = DiTConfig(num_layers=1, num_attention_heads=2, attention_head_dim=64, intermediate_size=256, adaln_dim=256,
                   in_channels=128, llm_features_dim=64, mrope_section=(12, 10, 10))


@pytest.fixture(scope="module")
def state():
    return random_tensors(module_shapes(Ideogram4DiT, CONFIG), torch.Generator().manual_seed(3))


def gguf_reference(path) -> dict[str, torch.Tensor]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).copy())
            .reshape([int(d) for d in reversed(t.shape.tolist())]) for t in reader.tensors}


@pytest.mark.parametrize("block_type", ["Q8_0", "Q4_0", "Q5_1", "Q4_K"])
def test_gguf_dit_loads_the_weights_gguf_dequantises(state, tmp_path, block_type):
    path = tmp_path / f"ideogram4-{block_type}.gguf"
    types = write_gguf(path, {f"model.diffusion_model.{k}": v for k, v in state.items()},
                       gguf_dit_types(block_type), "ideogram4")
    checkpoint = load_dit_checkpoint(path, dtype=torch.float32)
    assert checkpoint.layout == f"official-gguf-{block_type}" and checkpoint.config == CONFIG
    reference = gguf_reference(path)
    for key, value in checkpoint.state_dict.items():
        assert torch.equal(value, reference["model.diffusion_model." + key]), key
    kept = load_dit_checkpoint(path, dtype=torch.float32, keep_quantized=True)
    # Q4_K super-blocks (256) do not fit the 128-wide rows; those stay F32, as llama.cpp's converters do.
    assert set(kept.quantized) == {key[len("model.diffusion_model."): -len(".weight")] for key, kind in types.items()
                                   if kind == block_type}
    assert "layers.0.feed_forward.w2" in kept.quantized
    for layer, spec in kept.quantized.items():
        assert kept.state_dict[layer + ".weight"].dtype == torch.uint8
        assert torch.equal(spec.dequantize(kept.state_dict[layer + ".weight"], {}, torch.float32),
                           checkpoint.state_dict[layer + ".weight"])


def nf4_linear(key, value):
    return value.ndim == 2 and key.endswith(".weight") and "norm" not in key and key != "embed_image_indicator.weight"


def test_nf4_official_and_diffusers_layouts_load_the_same_weights(state, tmp_path):
    official = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    official.parent.mkdir()
    stored = store_nf4(state, nf4_linear)
    save_file(stored, str(official))
    diffusers = {}
    for key, value in state.items():  # split q/k/v as the -nf4-diffusers build does
        if key.endswith("attention.qkv.weight"):
            for letter, rows in zip("qkv", value.chunk(3)):
                diffusers[key.replace("qkv", f"to_{letter}")] = rows
        elif key.endswith("attention.o.weight"):
            diffusers[key.replace("attention.o.", "attention.to_out.0.")] = value
        else:
            diffusers[key] = value
    diffusers_path = tmp_path / "diffusers.safetensors"
    save_file(store_nf4(diffusers, nf4_linear), str(diffusers_path))

    loaded = load_dit_checkpoint(official, dtype=torch.float32)
    assert loaded.layout == "official-nf4"
    # The oracle: the NF4 table by hand (QLoRA appendix E levels as stored in the file's quant_map).
    packed = stored["layers.0.attention.qkv.weight"].reshape(-1).long()
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)
    table = stored["layers.0.attention.qkv.weight.quant_map"]
    expected = (table[codes] * stored["layers.0.attention.qkv.weight.absmax"].repeat_interleave(64))
    assert torch.equal(loaded.state_dict["layers.0.attention.qkv.weight"], expected.reshape(384, 128))

    from_diffusers = load_dit_checkpoint(diffusers_path, dtype=torch.float32)
    assert from_diffusers.layout == "diffusers-nf4"
    for key, value in loaded.state_dict.items():
        assert torch.equal(from_diffusers.state_dict[key], value), key
    kept = load_dit_checkpoint(diffusers_path, dtype=torch.float32, keep_quantized=True)
    spec = kept.quantized["layers.0.attention.qkv"]
    sidecars = {name: kept.state_dict["layers.0.attention.qkv." + name] for name in spec.sidecars}
    assert torch.equal(spec.dequantize(kept.state_dict["layers.0.attention.qkv.weight"], sidecars, torch.float32),
                       loaded.state_dict["layers.0.attention.qkv.weight"])


def test_double_quantised_nf4_is_refused(state, tmp_path):
    stored = store_nf4(state, nf4_linear)
    stored["layers.0.attention.o.weight.nested_absmax"] = torch.ones(2)
    path = tmp_path / "nested.safetensors"
    save_file(stored, str(path))
    with pytest.raises(CheckpointError, match=r"nested\.safetensors: .*bitsandbytes 4-bit weight the pack does not "
                                              r"read.*nested_absmax.*official ideogram-4-nf4"):
        load_dit_checkpoint(path)


def test_a_language_model_gguf_in_the_dit_loader_is_refused_naming_the_text_encoder_loader(tmp_path):
    path = tmp_path / "Qwen3-VL-8B-Q8_0.gguf"
    write_gguf(path, {"token_embd.weight": torch.randn(64, 32), "blk.0.attn_q.weight": torch.randn(32, 32)},
               lambda name, t: "Q8_0", "qwen3vl")
    with pytest.raises(CheckpointError, match=r"Q8_0\.gguf: this is not an Ideogram 4 DiT checkpoint: it looks like a "
                                              r"GGUF file of architecture 'qwen3vl' holding a Qwen3 language model.*"
                                              r"Text Encoder Loader"):
        load_dit_checkpoint(path)


def test_a_gguf_of_another_image_model_is_refused_naming_its_architecture(tmp_path):
    path = tmp_path / "flux1-dev-Q4_0.gguf"
    write_gguf(path, {"double_blocks.0.img_attn.qkv.weight": torch.randn(96, 32),
                      "single_blocks.0.linear1.weight": torch.randn(32, 32)}, lambda name, t: "Q4_0", "flux")
    with pytest.raises(CheckpointError, match=r"flux1-dev-Q4_0\.gguf: this is not an Ideogram 4 DiT checkpoint: it "
                                              r"looks like a GGUF file of architecture 'flux' holding a FLUX transformer"):
        load_dit_checkpoint(path)


def test_an_unsupported_gguf_type_is_refused_naming_the_type_and_the_supported_ones(state, tmp_path):
    path = tmp_path / "ideogram4-IQ4_NL.gguf"
    writer = gguf.GGUFWriter(str(path), "ideogram4")
    size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_NL]
    writer.add_tensor("layers.0.attention.o.weight", np.zeros((128, 128 // size[0] * size[1]), dtype=np.uint8),
                      raw_shape=(128, 128 // size[0] * size[1]), raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"IQ4_NL\.gguf: holds GGUF tensor types the pack does not read: IQ4_NL "
                                              r"\(e\.g\. layers\.0\.attention\.o\.weight\)\. Supported types: .*Q4_K.*"
                                              r"Q8_0"):
        load_dit_checkpoint(path)


def test_one_classifier_names_each_file_by_content_not_by_name(state, tmp_path):
    from ideogram4.weight_files import classify_weight_file

    dit = tmp_path / "looks_like_a_text_encoder.gguf"  # the name says nothing; the content decides
    write_gguf(dit, state, gguf_dit_types("Q8_0"), "ideogram4")
    text_encoder = tmp_path / "ideogram4.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(4, 2), "model.layers.0.self_attn.q_norm.weight": torch.ones(2)},
              str(text_encoder))
    lora = tmp_path / "model.gguf.safetensors"
    save_file({"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.zeros(2, 2)}, str(lora))
    found = {path.name: classify_weight_file(path) for path in (dit, text_encoder, lora)}
    assert (found[dit.name].container, found[dit.name].model, found[dit.name].architecture) == \
        ("gguf", "ideogram4_dit", "ideogram4")
    assert (found[text_encoder.name].container, found[text_encoder.name].model) == ("safetensors",
                                                                                    "qwen3_text_encoder")
    assert found[lora.name].model == "lora" and "LoRA loader" in found[lora.name].description


def test_a_damaged_gguf_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "ideogram4-Q8_0.gguf"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"ideogram4-Q8_0\.gguf: not a readable safetensors file .*named \.gguf "
                                              r"but does not start with the GGUF magic bytes"):
        load_dit_checkpoint(path)
