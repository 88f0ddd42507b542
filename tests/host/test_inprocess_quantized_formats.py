"""In-process host tests of the quantised file formats the DiT Loader reads (run in the host's Python; see
comfy_inprocess.py): tiny DiT pairs saved as GGUF Q8_0 and Q4_K (written with gguf's GGUFWriter) and as bitsandbytes
nf4 give, through the DiT Loader (weights kept quantised) and the Sampler node, the final latent of the same
weights de-quantised by the format's own library (gguf's numpy ``dequantize``; the published NF4 table, or
bitsandbytes where it runs) and sampled in float32 by the core; partial loading streams them unchanged.
"""

from __future__ import annotations

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import test_inprocess_model_management as model_management_tests  # noqa: E402  (the partial-load helper)
import test_inprocess_sampler as sampler_tests  # noqa: E402  (the core oracle loop and the Sampler call)
import tiny_host_models as tiny  # noqa: E402

gguf = pytest.importorskip("gguf", reason="the pack's requirements (gguf) are not installed in this host's Python")

# Widths whose rows hold whole Q4_K super-blocks (256 values), text width from the tiny text encoder.
FORMAT_DIT_CONFIG = tiny.DiTConfig(num_layers=2, num_attention_heads=4, attention_head_dim=64, intermediate_size=512,
                                   adaln_dim=256, in_channels=128, llm_features_dim=tiny.TEXT_CONFIG.features_dim,
                                   mrope_section=(12, 10, 10))
FORMATS = ("Q8_0", "Q4_K", "nf4")


def pair_files(kind: str) -> tuple[str, str]:
    suffix = "safetensors" if kind in ("float32", "nf4") else "gguf"
    return f"ideogram4_format_{kind}.{suffix}", f"ideogram4_format_unconditional_{kind}.{suffix}"


def nf4_weight(key: str, tensor: torch.Tensor) -> bool:
    return tensor.ndim == 2 and key.endswith(".weight") and "norm" not in key and key != "embed_image_indicator.weight"


@pytest.fixture(scope="module")
def add_model_files():
    def add(models_dir):
        from safetensors.torch import save_file

        from tools.quantized_weights import gguf_dit_types, store_nf4, write_gguf

        folder = models_dir / "diffusion_models"
        for index, seed in enumerate((31, 32)):
            state = tiny.dit_state_dict(seed, FORMAT_DIT_CONFIG)
            save_file(state, str(folder / pair_files("float32")[index]))
            for block_type in ("Q8_0", "Q4_K"):
                write_gguf(folder / pair_files(block_type)[index], state, gguf_dit_types(block_type), "ideogram4")
            save_file(store_nf4(state, nf4_weight), str(folder / pair_files("nf4")[index]))
    return add


def dequantised_by_the_format_library(path) -> dict[str, torch.Tensor]:
    """The oracle weights (float32): gguf's numpy de-quantisation, or the NF4 table applied by hand (bitsandbytes'
    ``dequantize_4bit`` where it is installed)."""
    if str(path).endswith(".gguf"):
        import numpy as np

        reader = gguf.GGUFReader(str(path))
        return {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).copy())
                .reshape([int(d) for d in reversed(t.shape.tolist())]) for t in reader.tensors}
    from safetensors.torch import load_file

    stored = load_file(str(path))
    weights = {}
    for key, value in stored.items():
        if ".weight." in key:
            continue
        if key + ".absmax" not in stored:
            weights[key] = value.float()
            continue
        import json

        state = json.loads(bytes(stored[key + ".quant_state.bitsandbytes__nf4"].tolist()))
        shape, blocksize = state["shape"], state["blocksize"]
        try:
            import bitsandbytes.functional as bnbf

            quant_state = bnbf.QuantState(absmax=stored[key + ".absmax"], shape=torch.Size(shape),
                                          code=stored[key + ".quant_map"], blocksize=blocksize, quant_type="nf4",
                                          dtype=torch.float32)
            weights[key] = bnbf.dequantize_4bit(value, quant_state).float()
        except ImportError:
            codes = torch.stack([value.reshape(-1) >> 4, value.reshape(-1) & 15], dim=1).reshape(-1).long()
            table = stored[key + ".quant_map"].float()
            scales = stored[key + ".absmax"].float().repeat_interleave(blocksize)
            count = shape[0] * shape[1]
            weights[key] = (table[codes[:count]] * scales[:count]).reshape(shape)
    return weights


def core_dit(state):
    from ideogram4.dit import Ideogram4DiT

    dit = Ideogram4DiT(FORMAT_DIT_CONFIG)
    dit.load_state_dict(state, strict=True)
    return dit.eval()


@pytest.fixture(scope="module")
def features(pack_models):
    return pack_models[2]


def pack_latent(host, features, kind, weight_dtype="default"):
    cond, uncond = comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=pair_files(kind)[0],
                                            uncond_model_name=pair_files(kind)[1], weight_dtype=weight_dtype)
    return (cond, uncond), sampler_tests.run_pack_sampler(host, (cond, uncond, features))


@pytest.fixture(scope="module")
def unquantised_latent(host, features):
    return pack_latent(host, features, "float32")[1]


def test_dit_loader_lists_gguf_files_from_its_folders(host, models):
    listed = host.nodes.model_folders.model_file_list("diffusion_models")
    assert pair_files("Q8_0")[0] in listed and pair_files("nf4")[0] in listed and tiny.COND_FILE in listed
    assert pair_files("Q8_0")[0] not in host_folder_list("diffusion_models")  # native loaders do not see them


def host_folder_list(folder):
    import folder_paths

    return folder_paths.get_filename_list(folder)


@pytest.mark.parametrize("kind", FORMATS)
def test_quantised_pair_gives_the_latent_of_the_weights_dequantised_by_the_format_library(
        host, models, features, unquantised_latent, kind):
    folder = models / "diffusion_models"
    (cond, uncond), latent = pack_latent(host, features, kind)
    qkv = cond.model.diffusion_model.get_submodule("layers.0.attention.qkv")
    assert qkv.weight.dtype == torch.uint8 and qkv.quantized.kind == ("nf4" if kind == "nf4" else "gguf")

    oracle = [core_dit(dequantised_by_the_format_library(folder / name)) for name in pair_files(kind)]
    features_tensor = features[0][0].float()
    expected = sampler_tests.core_latent((oracle[0], oracle[1], features_tensor))
    torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-5)
    distance = (latent - unquantised_latent).abs().max().item()
    scale = unquantised_latent.abs().max().item()
    print(f"\n{kind}: final-latent max |difference| from the unquantised pair {distance:.4g} (latent max {scale:.3g})")
    assert 0 < distance


@pytest.mark.parametrize("kind", FORMATS)
def test_bf16_dequantises_the_quantised_files_once(host, models, kind):
    cond, _ = comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=pair_files(kind)[0],
                                       uncond_model_name=pair_files(kind)[1], weight_dtype="bf16")
    qkv = cond.model.diffusion_model.get_submodule("layers.0.attention.qkv")
    assert qkv.weight.dtype == torch.bfloat16 and getattr(qkv, "quantized", None) is None


@pytest.mark.parametrize("kind", FORMATS)
def test_partial_load_streams_quantised_layers_and_keeps_the_output_identical(host, models, kind):
    cond, _ = comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=pair_files(kind)[0],
                                       uncond_model_name=pair_files(kind)[1], weight_dtype="default")
    fully_loaded, partially_loaded, (streamed, _) = model_management_tests.full_and_partial_load(cond, velocity)
    assert streamed > 0
    assert torch.equal(partially_loaded, fully_loaded)


def velocity(dit) -> torch.Tensor:
    from ideogram4.velocity import conditional_velocity

    generator = torch.Generator().manual_seed(8)
    tokens = torch.randn((1, 12, 128), generator=generator)
    text = torch.randn((1, 5, FORMAT_DIT_CONFIG.llm_features_dim), generator=generator)
    return conditional_velocity(dit, tokens, 0.3, text, None, 3, 4, dtype=torch.float32)


# Text encoder: Q8_0 rows need widths in multiples of 32, so these files hold a wider tiny encoder than the others.
FORMAT_TEXT_CONFIG = tiny.Qwen3VLTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=36,
                                            num_attention_heads=2, num_key_value_heads=1, head_dim=16)
TEXT_ENCODER_FILES = {"float32": "qwen3vl_format_float32.safetensors", "Q8_0": "Qwen3-VL-format-Q8_0.gguf",
                      "nf4": "qwen3vl_format_nf4.safetensors"}


@pytest.fixture(scope="module")
def text_encoder_state():
    from tools.make_tiny_weights import module_shapes, random_tensors

    shapes = module_shapes(tiny.Qwen3VLTextEncoder, FORMAT_TEXT_CONFIG)
    return random_tensors(shapes, torch.Generator().manual_seed(41), embedding_std=None)


@pytest.fixture(scope="module")
def text_encoder_files(models, text_encoder_state):
    from safetensors.torch import save_file

    from tools.quantized_weights import llama_cpp_text_encoder_names, store_nf4, write_gguf

    folder = models / "text_encoders"
    save_file(text_encoder_state, str(folder / TEXT_ENCODER_FILES["float32"]))
    write_gguf(folder / TEXT_ENCODER_FILES["Q8_0"],
               {llama_cpp_text_encoder_names(key): value for key, value in text_encoder_state.items()},
               lambda name, t: "Q8_0" if t.ndim == 2 else "F32", "qwen3vl")
    save_file(store_nf4(text_encoder_state, lambda key, t: t.ndim == 2 and "embed" not in key),
              str(folder / TEXT_ENCODER_FILES["nf4"]))
    return folder


def encoded(host, name, prompt="a red kite over a green hill"):
    (encoder,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncoderLoader, text_encoder_name=name)
    (conditioning,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                               prompt=prompt)
    return encoder, conditioning[0][0].float()


@pytest.mark.parametrize("kind", ["Q8_0", "nf4"])
def test_quantised_text_encoder_gives_the_features_of_the_format_library_dequantisation(
        host, text_encoder_files, kind):
    from ideogram4.text_encoder import Qwen3VLTextEncoder
    from ideogram4.text_encoder_checkpoint import hf_name_from_llama_cpp

    assert TEXT_ENCODER_FILES[kind] in host.nodes.model_folders.model_file_list("text_encoders")
    encoder, features = encoded(host, TEXT_ENCODER_FILES[kind])
    q_proj = encoder.loaded.encoder.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.uint8 and q_proj.quantized.kind == ("gguf" if kind == "Q8_0" else "nf4")

    oracle_state = dequantised_by_the_format_library(text_encoder_files / TEXT_ENCODER_FILES[kind])
    if kind == "Q8_0":
        oracle_state = {hf_name_from_llama_cpp(key): value for key, value in oracle_state.items()}
    oracle = Qwen3VLTextEncoder(FORMAT_TEXT_CONFIG)
    oracle.load_state_dict({key: oracle_state[key] for key in oracle.state_dict()}, strict=True)
    expected, _ = tiny_encode(encoder, oracle.eval())
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    _, unquantised = encoded(host, TEXT_ENCODER_FILES["float32"])
    print(f"\n{kind} text encoder: features max |difference| from the unquantised file "
          f"{(features - unquantised).abs().max().item():.4g} (features max {unquantised.abs().max().item():.3g})")


def tiny_encode(pack_encoder, oracle_module):
    """The oracle module run through the same tokenizer and prompt encoding as the pack's encoder."""
    from ideogram4.text_encoder import encode_prompts

    return encode_prompts(oracle_module, pack_encoder.loaded.tokenizer, ["a red kite over a green hill"])


# Comfy-Org int8_convrot / nvfp4_mixed: read through ComfyUI's own quantised layers where the host has them.
COMFY_ORG_FILES = {"nvfp4_mixed": pair_files("nvfp4_mixed"), "int8_convrot": pair_files("int8_convrot")}


def host_reads_comfy_quant(host) -> bool:
    return {"nvfp4", "int8_tensorwise"} <= host.nodes.compat.comfy_quant_formats()


def comfy_quantised_state(state: dict, kind: str) -> dict:
    """``state`` with the block Linears quantised by ComfyUI's own code (comfy.quant_ops / comfy-kitchen) and
    written by ComfyUI's own layer ``state_dict`` (the keys Comfy-Org's files carry): nvfp4_mixed puts the token
    Linears in nvfp4 and adaln_modulation in float8_e4m3fn; int8_convrot every block Linear in int8 with convrot."""
    import comfy.ops
    import comfy.quant_ops as quant_ops

    ops = comfy.ops.mixed_precision_ops({"mixed_ops": True}, torch.float32)
    out = {}
    for key, value in state.items():
        if not (key.startswith("layers.") and key.endswith(".weight") and value.ndim == 2):
            out[key] = value
            continue
        if kind == "int8_convrot":
            fmt, options = "int8_tensorwise", dict(per_channel=True, convrot=True, convrot_groupsize=256)
        else:
            fmt, options = ("float8_e4m3fn", {}) if "adaln_modulation" in key else ("nvfp4", {})
        layout = quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
        layer = ops.Linear(value.shape[1], value.shape[0], bias=False, dtype=torch.float32)
        layer.weight = torch.nn.Parameter(quant_ops.QuantizedTensor.from_float(value, layout, **options),
                                          requires_grad=False)
        layer.quant_format = fmt
        out.update({key[: -len("weight")] + name: tensor for name, tensor in layer.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def comfy_org_files(host, models):
    from safetensors.torch import save_file

    if not host_reads_comfy_quant(host):
        pytest.skip("this host's comfy.quant_ops does not read nvfp4 / int8_tensorwise")
    folder = models / "diffusion_models"
    for kind, names in COMFY_ORG_FILES.items():
        for name, seed in zip(names, (31, 32)):
            state = comfy_quantised_state(tiny.dit_state_dict(seed, FORMAT_DIT_CONFIG), kind)
            save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    return folder


@pytest.mark.parametrize("kind", list(COMFY_ORG_FILES))
def test_comfy_org_files_run_through_comfys_quantised_layers(host, features, unquantised_latent, comfy_org_files,
                                                             kind):
    """The pack's latent equals the core loop run on DiTs built with ComfyUI's own quantised layers from the same
    file (the format's own library), and stays near the unquantised pair."""
    from safetensors.torch import load_file

    from ideogram4.dit import Ideogram4DiT

    (cond, _), latent = pack_latent(host, features, kind)
    qkv = cond.model.diffusion_model.get_submodule("layers.0.attention.qkv")
    assert type(qkv.weight).__name__ == "QuantizedTensor" or type(qkv.weight.data).__name__ == "QuantizedTensor"
    operations = host.nodes.compat.comfy_quantized_operations(torch.float32, torch.device("cpu"))
    oracle = []
    for name in COMFY_ORG_FILES[kind]:
        dit = Ideogram4DiT(FORMAT_DIT_CONFIG, dtype=torch.float32, operations=operations)
        dit.load_state_dict(load_file(str(comfy_org_files / name)), strict=True)
        oracle.append(dit.eval())
    expected = sampler_tests.core_latent((oracle[0], oracle[1], features[0][0].float()))
    torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-5)
    distance = (latent - unquantised_latent).abs().max().item()
    print(f"\n{kind}: final-latent max |difference| from the unquantised pair {distance:.4g}")
    assert distance < 0.5 * unquantised_latent.abs().max().item()


def test_comfy_org_nvfp4_file_on_a_host_without_comfy_quant_ops_names_the_version_and_the_files_that_work(
        host, models):
    if host_reads_comfy_quant(host):
        pytest.skip("this host reads nvfp4 through comfy.quant_ops (tested above)")
    from safetensors.torch import save_file

    state = tiny.dit_state_dict(33, FORMAT_DIT_CONFIG)
    out = dict(state)
    weight = state["layers.0.attention.o.weight"]  # the nvfp4 layout ComfyUI's layer reads: 2 values per byte
    out["layers.0.attention.o.weight"] = torch.zeros((weight.shape[0], weight.shape[1] // 2), dtype=torch.uint8)
    out["layers.0.attention.o.weight_scale"] = torch.ones((weight.shape[0], weight.shape[1] // 16))
    out["layers.0.attention.o.weight_scale_2"] = torch.tensor(1.0)
    out["layers.0.attention.o.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    folder = models / "diffusion_models"
    save_file(out, str(folder / "ideogram4_nvfp4_mixed.safetensors"))
    save_file(out, str(folder / "ideogram4_unconditional_nvfp4_mixed.safetensors"))
    with pytest.raises(ValueError, match=r"ideogram4_nvfp4_mixed\.safetensors is stored in ComfyUI's nvfp4 format.*"
                                         r"this ComfyUI lacks them\. Update ComfyUI \(version 0\.33 reads them\).*"
                                         r"ideogram4_fp8_scaled\.safetensors.*GGUF"):
        comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name="ideogram4_nvfp4_mixed.safetensors",
                                 uncond_model_name="ideogram4_unconditional_nvfp4_mixed.safetensors",
                                 weight_dtype="default")


def test_comfy_org_nvfp4_text_encoder_runs_through_comfys_quantised_layers(host, text_encoder_files,
                                                                          text_encoder_state):
    from safetensors.torch import load_file, save_file

    from ideogram4.text_encoder import Qwen3VLTextEncoder

    if not host_reads_comfy_quant(host):
        pytest.skip("this host's comfy.quant_ops does not read nvfp4 (the refusal is tested below)")
    path = text_encoder_files / "qwen3vl_format_nvfp4.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in comfy_quantised_state(text_encoder_state,
                                                                              "nvfp4_mixed").items()}, str(path))
    encoder, features = encoded(host, path.name)
    q_proj = encoder.loaded.encoder.layers[0].self_attn.q_proj
    assert "QuantizedTensor" in (type(q_proj.weight).__name__, type(q_proj.weight.data).__name__)
    operations = host.nodes.compat.comfy_quantized_operations(torch.float32, torch.device("cpu"))
    oracle = Qwen3VLTextEncoder(FORMAT_TEXT_CONFIG, dtype=torch.float32, operations=operations)
    stored = {key[len("model."):]: value for key, value in load_file(str(path)).items()}
    oracle.load_state_dict(stored, strict=True)
    expected, _ = tiny_encode(encoder, oracle.eval())
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_comfy_org_nvfp4_text_encoder_on_a_host_without_comfy_quant_ops_is_refused(host, text_encoder_files,
                                                                                  text_encoder_state):
    from safetensors.torch import save_file

    if host_reads_comfy_quant(host):
        pytest.skip("this host reads nvfp4 through comfy.quant_ops (tested above)")
    state = {"model." + k: v for k, v in text_encoder_state.items()}
    weight = state["model.layers.0.self_attn.q_proj.weight"]
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros((weight.shape[0], weight.shape[1] // 2),
                                                                  dtype=torch.uint8)
    state["model.layers.0.self_attn.q_proj.weight_scale"] = torch.ones((weight.shape[0], weight.shape[1] // 16))
    state["model.layers.0.self_attn.q_proj.weight_scale_2"] = torch.tensor(1.0)
    state["model.layers.0.self_attn.q_proj.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'),
                                                                        dtype=torch.uint8)
    save_file(state, str(text_encoder_files / "qwen3vl_8b_nvfp4.safetensors"))
    with pytest.raises(ValueError, match=r"Ideogram 4 Text Encoder Loader: .*qwen3vl_8b_nvfp4\.safetensors is stored "
                                         r"in ComfyUI's nvfp4 format.*version 0\.33.*qwen3vl_8b_fp8_scaled"):
        encoded(host, "qwen3vl_8b_nvfp4.safetensors")
