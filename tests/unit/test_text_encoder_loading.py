"""Loading the Qwen3-VL text encoder from its published file layouts (ideogram4.text_encoder_checkpoint).

Every layout is written from the same tiny random Qwen3-VL (36 decoder layers, hidden 32, 4/2 heads, head dim 8)
and must give exactly the features of an encoder filled with the expected weights: the stored ones for bf16/fp32
files, the de-quantised ones (formulas written out here) for fp8 files.
"""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ideogram4 import text_encoder_checkpoint
from ideogram4.safetensors_io import CheckpointError
from ideogram4.text_encoder import Qwen3VLTextConfig, Qwen3VLTextEncoder
from ideogram4.text_encoder_checkpoint import (
    inspect_text_encoder_checkpoint,
    load_text_encoder,
    load_text_encoder_model,
)

transformers = pytest.importorskip("transformers")

from tiny_qwen import tiny_qwen3_vl  # noqa: E402  (needs transformers)

HF_PREFIX = "model.language_model."
FP8_MAX = 448.0
# A few real ids (template + words), so the embedding rows used are spread over the vocabulary.
TOKEN_IDS = torch.tensor([[151644, 872, 198, 64, 8251, 9834, 11, 1879, 151645, 198, 151644, 77091, 198]])
LAYER_KEY = re.compile(r"layers\.(\d+)\.")


def is_linear_weight(key: str, value: torch.Tensor) -> bool:
    """The weights the official quantiser turns to fp8: those of nn.Linear layers (2-D, not embeddings)."""
    return value.dim() == 2 and "embed" not in key


def quantize_rowwise(weight: torch.Tensor):
    """The official quantiser: per-row scale = max|w| / 448, weight / scale in float8_e4m3fn."""
    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale.squeeze(1)


def quantize_per_tensor(weight: torch.Tensor):
    scale = weight.float().abs().max().clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale.reshape(())


def comfy_quant_entry(quant_format: str = "float8_e4m3fn") -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": quant_format}).encode("utf-8")), dtype=torch.uint8)


def features_of(encoder: Qwen3VLTextEncoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(TOKEN_IDS)


def reference_features(language_model_state: dict, dtype=torch.float32) -> torch.Tensor:
    """Features of an encoder filled directly with ``language_model_state`` (keys without prefix)."""
    encoder = Qwen3VLTextEncoder(TINY_CONFIG, dtype=dtype)
    wanted = encoder.state_dict().keys()
    encoder.load_state_dict({key: language_model_state[key].to(dtype) for key in wanted}, strict=True)
    return features_of(encoder.eval())


TINY_CONFIG = Qwen3VLTextConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=36,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8)


@pytest.fixture(scope="module")
def hf_model():
    return tiny_qwen3_vl()


@pytest.fixture(scope="module")
def full_state(hf_model):
    """The whole Qwen3VLForConditionalGeneration state dict (vision tower and LM head included)."""
    return {key: value.detach().clone() for key, value in hf_model.state_dict().items()}


@pytest.fixture(scope="module")
def language_model_state(full_state):
    return {key[len(HF_PREFIX):]: value for key, value in full_state.items() if key.startswith(HF_PREFIX)}


@pytest.fixture
def read_keys(monkeypatch):
    """Every tensor key the loader materialises."""
    seen = []
    original = text_encoder_checkpoint.iter_tensors

    def recording_iter_tensors(source, keys):
        keys = list(keys)
        seen.extend(keys)
        return original(source, keys)

    monkeypatch.setattr(text_encoder_checkpoint, "iter_tensors", recording_iter_tensors)
    return seen


def assert_only_language_model_layers_read(keys, prefix):
    assert keys, "nothing was read"
    for key in keys:
        assert key.startswith(prefix), key
        rest = key[len(prefix):]
        match = LAYER_KEY.match(rest)
        assert rest == "embed_tokens.weight" or (match and int(match.group(1)) < 36), key


# ------------------------------------------------------------------------------------------------------------------
# Hugging Face folders
# ------------------------------------------------------------------------------------------------------------------


def test_hf_folder_fp32_loads_exactly_without_touching_the_vision_tower(hf_model, language_model_state, tmp_path,
                                                                        read_keys):
    hf_model.save_pretrained(tmp_path / "text_encoder")
    encoder, layout = load_text_encoder_model(tmp_path / "text_encoder", dtype=torch.float32)

    assert layout.prefix == HF_PREFIX and layout.config_source == "config.json" and layout.quantization == "none"
    assert layout.config == TINY_CONFIG
    assert len(encoder.layers) == 36
    assert torch.equal(features_of(encoder), reference_features(language_model_state))
    assert_only_language_model_layers_read(read_keys, HF_PREFIX)


def test_sharded_hf_folder_loads_the_same(hf_model, language_model_state, tmp_path):
    hf_model.save_pretrained(tmp_path / "text_encoder", max_shard_size="5MB")
    assert (tmp_path / "text_encoder" / "model.safetensors.index.json").is_file()
    encoder, _ = load_text_encoder_model(tmp_path / "text_encoder", dtype=torch.float32)
    assert torch.equal(features_of(encoder), reference_features(language_model_state))


def test_bf16_hf_folder_loads_in_bf16(hf_model, language_model_state, tmp_path):
    bf16_state = {key: value.to(torch.bfloat16) for key, value in hf_model.state_dict().items()}
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    save_file(bf16_state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hf_model.config.to_dict()))

    encoder, _ = load_text_encoder_model(folder, dtype=torch.bfloat16)

    assert encoder.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(features_of(encoder), reference_features(language_model_state, dtype=torch.bfloat16))


# ------------------------------------------------------------------------------------------------------------------
# Official fp8 (per-row) folder
# ------------------------------------------------------------------------------------------------------------------


def write_official_fp8_folder(full_state, hf_model, folder):
    """``text_encoder/`` as ideogram-4-fp8 ships it: AutoModel keys (``language_model.*``, ``visual.*``), every
    Linear weight fp8 + per-row float32 ``weight_scale``, the rest bf16, config flag set."""
    folder.mkdir(parents=True)
    stored = {}
    for key, value in full_state.items():
        if key.startswith("lm_head."):
            continue  # AutoModel has no LM head
        key = key[len("model."):]
        if is_linear_weight(key, value):
            stored[key], stored[key[: -len("weight")] + "weight_scale"] = quantize_rowwise(value)
        else:
            stored[key] = value.to(torch.bfloat16)
    save_file(stored, folder / "model.safetensors")
    config = hf_model.config.to_dict()
    config["ideogram_fp8_weight_only"] = True
    (folder / "config.json").write_text(json.dumps(config))
    return stored


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_official_fp8_folder_equals_model_from_official_dequantisation(full_state, hf_model, tmp_path, dtype):
    stored = write_official_fp8_folder(full_state, hf_model, tmp_path / "text_encoder")
    prefix = "language_model."
    # The official Fp8Linear: weight.to(dtype) * weight_scale.to(dtype)[:, None], both roundings in dtype.
    expected = {}
    for key, value in stored.items():
        if key.startswith(prefix) and not key.endswith("weight_scale"):
            scale_key = key[: -len("weight")] + "weight_scale"
            if scale_key in stored:
                value = value.to(dtype) * stored[scale_key].to(dtype)[:, None]
            expected[key[len(prefix):]] = value.to(dtype)

    encoder, layout = load_text_encoder_model(tmp_path / "text_encoder", dtype=dtype)

    assert layout.prefix == prefix and layout.quantization == "fp8_rowwise"
    loaded = encoder.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key
    assert torch.equal(features_of(encoder), reference_features(expected, dtype=dtype))


# ------------------------------------------------------------------------------------------------------------------
# ComfyUI single files (comfy_quant per-tensor fp8)
# ------------------------------------------------------------------------------------------------------------------


def write_comfy_fp8_file(full_state, path, text_prefix, legacy=False, unquantized=("layers.0.mlp.",)):
    """A ComfyUI-style single file: ``text_prefix`` in front of the language model, vision tower and LM head kept
    in bf16, language-model Linear weights as per-tensor fp8 (except those under ``unquantized``, as in "mixed"
    files). ``legacy``: the older scaled_fp8 format (``.scale_weight``, a ``scaled_fp8`` marker, no comfy_quant)."""
    stored, expected = {}, {}
    for key, value in full_state.items():
        if key.startswith(HF_PREFIX):
            name = key[len(HF_PREFIX):]
            quantize = name.endswith("_proj.weight") and not any(name.startswith(u) for u in unquantized)
            if quantize:
                weight, scale = quantize_per_tensor(value)
                layer = text_prefix + name[: -len("weight")]
                stored[text_prefix + name] = weight
                if legacy:
                    stored[layer + "scale_weight"] = scale
                else:
                    stored[layer + "weight_scale"] = scale
                    stored[layer + "comfy_quant"] = comfy_quant_entry()
                expected[name] = (weight, scale)
            else:
                stored[text_prefix + name] = value.to(torch.bfloat16)
                expected[name] = (value.to(torch.bfloat16), None)
        else:
            stored[key.replace("model.visual.", "model.visual." if text_prefix == HF_PREFIX else "visual.")] = \
                value.to(torch.bfloat16)
    if legacy:
        stored["scaled_fp8"] = torch.empty(2, dtype=torch.float8_e4m3fn)
    save_file(stored, path)
    return expected


@pytest.mark.parametrize(
    "text_prefix, legacy",
    [(HF_PREFIX, False), ("model.", False), ("model.", True)],
    ids=["model.language_model", "model.layers", "legacy_scale_weight"],
)
def test_comfy_single_fp8_file_equals_model_from_dequantised_weights(full_state, tmp_path, read_keys,
                                                                     text_prefix, legacy):
    path = tmp_path / "qwen3vl_8b_fp8_scaled.safetensors"
    stored = write_comfy_fp8_file(full_state, path, text_prefix, legacy=legacy)
    dtype = torch.bfloat16
    # ComfyUI per-tensor fp8: weight.to(dtype) * scale.to(dtype); unquantised tensors as stored.
    expected = {name: weight.to(dtype) if scale is None else weight.to(dtype) * scale.to(dtype)
                for name, (weight, scale) in stored.items()}

    encoder, layout = load_text_encoder_model(path, dtype=dtype)

    assert layout.prefix == text_prefix and layout.quantization == "fp8_per_tensor"
    # No config.json: the dimensions come from the tensor shapes, theta and eps are the Qwen3-VL-8B values.
    assert layout.config_source == "tensor shapes" and layout.config == TINY_CONFIG
    assert layout.config.rope_theta == 5e6 and layout.config.rms_norm_eps == 1e-6
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert torch.equal(features_of(encoder), reference_features(expected, dtype=dtype))
    materialised = [key for key in read_keys if not key.endswith(("weight_scale", "comfy_quant", "scale_weight"))]
    assert_only_language_model_layers_read(materialised, text_prefix)


def keep_quantized_linear(linear: torch.nn.Linear, quantized, stored: torch.Tensor, sidecars: dict) -> None:
    """A core-only stand-in for the nodes' quantised-layer maker: the Linear holds the stored weight and its
    sidecars and de-quantises per call."""
    linear.weight = torch.nn.Parameter(torch.empty(stored.shape, dtype=stored.dtype, device=linear.weight.device),
                                       requires_grad=False)
    for name, value in sidecars.items():
        setattr(linear, name, torch.nn.Parameter(value.clone(), requires_grad=False))

    def forward(x):
        weight = quantized.dequantize(linear.weight, {name: getattr(linear, name) for name in sidecars}, x.dtype)
        return torch.nn.functional.linear(x, weight, linear.bias)

    linear.forward = forward


@pytest.mark.parametrize("layout", ["comfy_per_tensor", "official_rowwise"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fp8_weights_kept_in_fp8_give_the_features_of_the_one_time_dequantisation(full_state, hf_model, tmp_path,
                                                                                  layout, dtype):
    if layout == "comfy_per_tensor":
        path = tmp_path / "qwen3vl_8b_fp8_scaled.safetensors"
        write_comfy_fp8_file(full_state, path, HF_PREFIX)
    else:
        path = tmp_path / "text_encoder"
        write_official_fp8_folder(full_state, hf_model, path)

    kept, _ = load_text_encoder_model(path, dtype=dtype, keep_quantized_with=keep_quantized_linear)
    dequantised, _ = load_text_encoder_model(path, dtype=dtype)

    q_proj = kept.layers[1].self_attn.q_proj
    assert q_proj.weight.dtype == torch.float8_e4m3fn
    assert q_proj.weight_scale.dtype == torch.float32 and q_proj.weight_scale.shape == (q_proj.out_features,)
    assert kept.embed_tokens.weight.dtype == dtype  # only Linear weights stay fp8
    if layout == "comfy_per_tensor":  # one scale per tensor becomes the same value on every row
        assert torch.equal(q_proj.weight_scale, q_proj.weight_scale[:1].expand_as(q_proj.weight_scale))
        assert kept.layers[0].mlp.up_proj.weight.dtype == dtype  # stored unquantised in this "mixed" file
    assert torch.equal(features_of(kept), features_of(dequantised))


@pytest.mark.parametrize("quant_format, message", [
    ("convrot_w4a4", r"layers\.3\.self_attn\.q_proj.*'convrot_w4a4', which this pack does not de-quantise"),
    # nvfp4 only through ComfyUI's own quantised layers: the core alone refuses it.
    ("nvfp4", r"qwen3vl_8b_other\.safetensors: stored in ComfyUI's nvfp4 format, which only ComfyUI's own quantised "
              r"layers read.*qwen3vl_8b_fp8_scaled"),
])
def test_a_comfy_quant_format_other_than_fp8_is_refused(full_state, tmp_path, quant_format, message):
    path = tmp_path / "qwen3vl_8b_other.safetensors"
    write_comfy_fp8_file(full_state, path, "model.")
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors["model.layers.3.self_attn.q_proj.comfy_quant"] = comfy_quant_entry(quant_format)
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=message):
        load_text_encoder_model(path)


def test_a_file_with_more_than_36_layers_builds_and_reads_only_36(language_model_state, tmp_path, read_keys):
    stored = {"model." + key: value for key, value in language_model_state.items()}
    for extra in range(36, 40):  # e.g. a longer Qwen3-VL: the extra layers must stay on disk
        for key, value in language_model_state.items():
            if key.startswith("layers.0."):
                stored["model." + key.replace("layers.0.", f"layers.{extra}.", 1)] = value.clone()
    save_file(stored, tmp_path / "long.safetensors")

    encoder, layout = load_text_encoder_model(tmp_path / "long.safetensors", dtype=torch.float32)

    assert layout.num_file_layers == 40 and len(encoder.layers) == 36
    assert torch.equal(features_of(encoder), reference_features(language_model_state))
    assert_only_language_model_layers_read(read_keys, "model.")


# ------------------------------------------------------------------------------------------------------------------
# Wrong files
# ------------------------------------------------------------------------------------------------------------------


def _write(path, shapes: dict[str, tuple[int, ...]]):
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, path)
    return path


@pytest.mark.parametrize(
    "shapes, looks_like",
    [
        ({"embed_image_indicator.weight": (2, 8), "layers.0.attention.qkv.weight": (24, 8),
          "input_proj.weight": (8, 4)}, "Ideogram 4 DiT"),
        ({"decoder.conv_in.weight": (8, 4, 3, 3), "encoder.conv_in.weight": (8, 3, 3, 3),
          "decoder.conv_out.weight": (3, 8, 3, 3)}, "VAE"),
        ({"text_model.encoder.layers.0.mlp.fc1.weight": (8, 4),
          "text_model.embeddings.token_embedding.weight": (10, 4)}, "CLIP"),
        ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4), "shared.weight": (10, 4)}, "T5"),
        ({"model.embed_tokens.weight": (10, 4), "model.layers.0.self_attn.q_proj.weight": (4, 4)},
         "without per-head q/k norms"),
    ],
    ids=["dit", "vae", "clip", "t5", "qwen2"],
)
def test_a_file_that_is_not_qwen3_vl_raises_saying_what_it_is(tmp_path, shapes, looks_like):
    path = _write(tmp_path / "wrong.safetensors", shapes)
    with pytest.raises(CheckpointError, match=f"not a Qwen3-VL text encoder: it looks like .*{looks_like}") as error:
        load_text_encoder_model(path)
    assert str(path) in str(error.value)


def test_too_few_decoder_layers_raises(language_model_state, tmp_path):
    stored = {"model." + key: value for key, value in language_model_state.items()
              if not (LAYER_KEY.match(key) and int(LAYER_KEY.match(key).group(1)) >= 28)}
    save_file(stored, tmp_path / "short.safetensors")
    with pytest.raises(CheckpointError, match="28 decoder layers.*at least 36"):
        load_text_encoder_model(tmp_path / "short.safetensors")


def test_a_plain_qwen3_config_is_refused(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "text_encoder")
    config_path = tmp_path / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "qwen3"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'qwen3'.*Qwen3-VL-8B-Instruct"):
        load_text_encoder_model(tmp_path / "text_encoder")


def test_a_config_that_does_not_match_the_weights_is_named(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "text_encoder")
    config_path = tmp_path / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"]["intermediate_size"] = 128
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape .*config\.json"):
        load_text_encoder_model(tmp_path / "text_encoder")


def test_inspection_reads_no_tensor_data(hf_model, tmp_path, read_keys):
    hf_model.save_pretrained(tmp_path / "text_encoder")
    layout = inspect_text_encoder_checkpoint(tmp_path / "text_encoder")
    assert layout.num_file_layers == 36 and read_keys == []


# ------------------------------------------------------------------------------------------------------------------
# With the tokenizer
# ------------------------------------------------------------------------------------------------------------------


def test_load_text_encoder_from_a_repository_root_finds_the_tokenizer_beside_it(
    hf_model, language_model_state, tmp_path, qwen_tokenizer_dir
):
    hf_model.save_pretrained(tmp_path / "repo" / "text_encoder")
    shutil.copytree(qwen_tokenizer_dir, tmp_path / "repo" / "tokenizer")

    loaded = load_text_encoder(tmp_path / "repo", dtype=torch.float32)
    features, lengths = loaded.encode(["a red fox"])

    assert loaded.tokenizer_dir == tmp_path / "repo" / "tokenizer"
    ids = loaded.tokenizer("<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n",
                           add_special_tokens=False)["input_ids"]
    assert lengths == [len(ids)]
    reference = Qwen3VLTextEncoder(TINY_CONFIG, dtype=torch.float32)
    reference.load_state_dict({key: language_model_state[key] for key in reference.state_dict()})
    with torch.no_grad():
        expected = reference(torch.tensor([ids]))
    assert torch.equal(features, expected)


# ---------------------------------------------------------------------------------------------------------------
# GGUF (llama.cpp naming) and bitsandbytes nf4
# ---------------------------------------------------------------------------------------------------------------


def write_gguf_text_encoder(language_model_state, path, architecture="qwen3vl"):
    """The language model as llama.cpp writes it: Linear weights and token_embd Q8_0, norms F32, with the LM
    head; the vision tower absent."""
    from tools.quantized_weights import llama_cpp_text_encoder_names, write_gguf

    tensors = {llama_cpp_text_encoder_names(key): value for key, value in language_model_state.items()}
    tensors["output.weight"] = language_model_state["embed_tokens.weight"]
    return write_gguf(path, tensors, lambda name, t: "Q8_0" if t.ndim == 2 else "F32", architecture)


def gguf_dequantised_state(path) -> dict:
    """The oracle: every tensor de-quantised by gguf's own numpy code, back in the pack's names."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from ideogram4.text_encoder_checkpoint import hf_name_from_llama_cpp

    reader = gguf.GGUFReader(str(path))
    return {hf_name_from_llama_cpp(t.name): torch.from_numpy(
        gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).copy()).reshape(
        [int(d) for d in reversed(t.shape.tolist())]) for t in reader.tensors if t.name != "output.weight"}


def test_gguf_text_encoder_gives_the_features_of_the_gguf_dequantised_weights(language_model_state, tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "Qwen3-VL-8B-Instruct-Q8_0.gguf"
    types = write_gguf_text_encoder(language_model_state, path)
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    layout = inspect_text_encoder_checkpoint(path)
    assert layout.quantization == "gguf" and layout.prefix == ""
    expected = reference_features(gguf_dequantised_state(path))
    loaded, _ = load_text_encoder_model(path, dtype=torch.float32)
    assert torch.equal(features_of(loaded), expected)
    kept, _ = load_text_encoder_model(path, dtype=torch.float32, keep_quantized_with=keep_quantized_linear)
    q_proj = kept.layers[3].self_attn.q_proj
    assert q_proj.weight.dtype == torch.uint8 and kept.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(features_of(kept), expected)


def test_gguf_of_another_language_model_is_refused_naming_what_it_is(language_model_state, tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "Qwen3-8B-Q8_0.gguf"
    write_gguf_text_encoder(language_model_state, path, architecture="qwen3")
    with pytest.raises(CheckpointError, match=r"Qwen3-8B-Q8_0\.gguf: a GGUF language model of architecture 'qwen3'.*"
                                              r"Qwen3-VL-8B-Instruct GGUF"):
        load_text_encoder_model(path)


def test_nf4_text_encoder_gives_the_features_of_the_nf4_table(full_state, language_model_state, tmp_path):
    from tools.quantized_weights import store_nf4

    path = tmp_path / "text_encoder_nf4.safetensors"
    stored = store_nf4(full_state, lambda key, value: key.startswith(HF_PREFIX) and is_linear_weight(key, value))
    save_file(stored, str(path))
    # The oracle: the published NF4 table by hand, code[nibble] * absmax[block of 64].
    expected_state = dict(language_model_state)
    for key in expected_state:
        if HF_PREFIX + key + ".absmax" in stored:
            packed = stored[HF_PREFIX + key].reshape(-1).long()
            codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)
            table = torch.tensor(published_nf4_table())
            scales = stored[HF_PREFIX + key + ".absmax"].repeat_interleave(64)
            expected_state[key] = (table[codes] * scales).reshape(expected_state[key].shape)
    assert inspect_text_encoder_checkpoint(path).quantization == "nf4"
    loaded, _ = load_text_encoder_model(path, dtype=torch.float32)
    expected = reference_features(expected_state)
    assert torch.equal(features_of(loaded), expected)
    kept, _ = load_text_encoder_model(path, dtype=torch.float32, keep_quantized_with=keep_quantized_linear)
    assert kept.layers[0].mlp.down_proj.weight.dtype == torch.uint8
    assert torch.equal(features_of(kept), expected)


def published_nf4_table() -> list[float]:
    """QLoRA's NF4 levels as published (Dettmers et al. 2023, appendix E)."""
    return [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0]
