"""In-process host tests of the node definitions and the entry point (run in the host's Python; see
comfy_inprocess.py): ComfyUI's own custom-node loader registers exactly the contract's nodes, with their inputs,
tooltips, category and display names; Text Encode reports caption problems on the node.
"""

from __future__ import annotations

import asyncio

import pytest

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

# Node id -> (display name, input names in order, output types): the team contract.
CONTRACT = {
    "Ideogram4RefCaption": ("Ideogram 4 Caption (reference)", ["state"], ["STRING", "INT", "INT"]),
    "Ideogram4RefDiTLoader": ("Ideogram 4 DiT Loader (reference)",
                              ["cond_model_name", "uncond_model_name", "weight_dtype", "compile_blocks"],
                              ["MODEL", "MODEL"]),
    "Ideogram4RefLoraLoader": ("Ideogram 4 LoRA Loader (reference)",
                               ["cond_model", "uncond_model", "lora_name", "strength_cond", "strength_uncond"],
                               ["MODEL", "MODEL"]),
    "Ideogram4RefTextEncoderLoader": ("Ideogram 4 Text Encoder Loader (reference)", ["text_encoder_name"],
                                      ["IDEOGRAM4_TEXT_ENCODER"]),
    "Ideogram4RefTextEncode": ("Ideogram 4 Text Encode (reference)",
                               ["text_encoder", "prompt", "official_width", "official_height"], ["CONDITIONING"]),
    "Ideogram4RefPromptEnhancer": ("Ideogram 4 Prompt Enhancer (reference)",
                                   ["text_encoder", "idea", "width", "height", "seed", "temperature",
                                    "max_new_tokens", "lm_head_name", "keep_boxes"], ["STRING"]),
    "Ideogram4RefSampler": ("Ideogram 4 Sampler (reference)",
                            ["cond_model", "uncond_model", "conditioning", "preset", "steps", "mu", "std",
                             "guidance_schedule", "seed", "width", "height", "batch_size", "latent", "denoise"],
                            ["LATENT"]),
    "Ideogram4RefScheduler": ("Ideogram 4 Scheduler (reference)",
                              ["preset", "steps", "mu", "std", "width", "height", "denoise"], ["SIGMAS"]),
    "Ideogram4RefGuider": ("Ideogram 4 Guider (reference)",
                           ["cond_model", "uncond_model", "conditioning", "preset", "steps", "guidance_schedule"],
                           ["GUIDER"]),
    "Ideogram4RefNoise": ("Ideogram 4 Noise (reference)", ["seed"], ["NOISE"]),
    "Ideogram4RefEmptyLatent": ("Ideogram 4 Empty Latent (reference)", ["width", "height", "batch_size"], ["LATENT"]),
    "Ideogram4RefVAELoader": ("Ideogram 4 VAE Loader (reference)", ["vae_name"], ["VAE"]),
    "Ideogram4RefVAEDecode": ("Ideogram 4 VAE Decode (reference)", ["samples", "vae", "tiled"], ["IMAGE"]),
}


@pytest.fixture(scope="module")
def host():
    return comfy_inprocess.host()


@pytest.fixture(scope="module")
def registered(host):
    """What ComfyUI's own custom-node loader registers for this pack folder."""
    import nodes as comfy_nodes

    before = set(comfy_nodes.NODE_CLASS_MAPPINGS)
    assert asyncio.run(comfy_nodes.load_custom_node(str(comfy_inprocess.PACK_ROOT))) is True
    return {name: comfy_nodes.NODE_CLASS_MAPPINGS[name] for name in set(comfy_nodes.NODE_CLASS_MAPPINGS) - before}


def test_comfyui_loader_registers_exactly_the_contract_nodes(registered):
    assert set(registered) == set(CONTRACT)


def test_entry_module_uses_the_v3_entry_point_only(host):
    assert not hasattr(host.pack, "NODE_CLASS_MAPPINGS")  # it would make ComfyUI ignore comfy_entrypoint
    assert host.pack.WEB_DIRECTORY == "./web"
    assert callable(host.pack.comfy_entrypoint)


@pytest.mark.parametrize("node_id", sorted(CONTRACT))
def test_node_schema_follows_the_contract(registered, node_id):
    display_name, input_names, output_types = CONTRACT[node_id]
    schema = registered[node_id].GET_SCHEMA()
    assert schema.node_id == node_id
    assert schema.display_name == display_name and display_name.endswith("(reference)")
    assert schema.category == "Ideogram 4"
    assert [entry.id for entry in schema.inputs] == input_names
    assert [entry.get_io_type() for entry in schema.outputs] == output_types
    missing = [entry.id for entry in schema.inputs if not entry.tooltip]
    assert not missing, f"inputs without a tooltip: {missing}"


def test_widget_defaults_and_choices(registered):
    sampler = {entry.id: entry for entry in registered["Ideogram4RefSampler"].GET_SCHEMA().inputs}
    assert sampler["preset"].options == ["Default 20", "Quality 48", "Turbo 12", "Custom"]
    assert sampler["seed"].control_after_generate
    assert (sampler["width"].step, sampler["height"].step) == (16, 16)
    assert sampler["latent"].optional and sampler["denoise"].optional and sampler["denoise"].default == 1.0
    loader = {entry.id: entry for entry in registered["Ideogram4RefDiTLoader"].GET_SCHEMA().inputs}
    assert loader["weight_dtype"].options == ["default", "bf16", "fp8", "fp8_fast"]
    assert loader["weight_dtype"].default == "default"
    assert loader["compile_blocks"].default is False and loader["compile_blocks"].tooltip  # opt-in
    encode = {entry.id: entry for entry in registered["Ideogram4RefTextEncode"].GET_SCHEMA().inputs}
    assert encode["prompt"].multiline
    for name in ("official_width", "official_height"):
        assert encode[name].optional and encode[name].default == 0
        assert (encode[name].min, encode[name].max, encode[name].step) == (0, 4096, 16)
    enhancer = {entry.id: entry for entry in registered["Ideogram4RefPromptEnhancer"].GET_SCHEMA().inputs}
    assert enhancer["idea"].multiline and enhancer["seed"].control_after_generate
    assert enhancer["lm_head_name"].optional and enhancer["lm_head_name"].options[0] == "none"
    assert enhancer["keep_boxes"].optional and enhancer["keep_boxes"].default is False
    assert enhancer["temperature"].min == 0.0
    assert (enhancer["width"].max, enhancer["width"].step) == (encode["official_width"].max, 16)


def test_text_encode_shows_caption_problems_on_the_node(host, tmp_path_factory):
    models_dir = tiny.write_models(tmp_path_factory.mktemp("models"))
    comfy_inprocess.register_models(models_dir)
    nodes = host.nodes
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    bad_caption = '{"compositional_deconstruction":{"elements":[]}}'  # "background" is required
    output = nodes.text_encoder_nodes.TextEncode.execute(text_encoder=encoder, prompt=bad_caption)
    (conditioning,) = output.args
    features, options = conditioning[0]
    assert features.shape[0] == 1 and features.shape[2] == tiny.TEXT_CONFIG.features_dim and options == {}
    shown = output.ui.as_dict()["text"][0]
    assert "background" in shown and "problem" in shown
    # A clean caption replaces the earlier report with the all-clear line.
    good = ('{"high_level_description":"A red wall.","compositional_deconstruction":'
            '{"background":"a red wall","elements":[]}}')
    clean = nodes.text_encoder_nodes.TextEncode.execute(text_encoder=encoder, prompt=good)
    assert list(clean.ui.as_dict()["text"]) == ["Caption check: no problems."]


def test_text_encode_official_size_equals_core_encode_with_image_slots(host, tmp_path_factory):
    """Text Encode with an official size gives the core encoder's features with that image's slots; one size
    0 encodes the text alone; a size that is not a multiple of 16 is a readable error naming the input."""
    import torch

    from ideogram4.text_encoder import image_slot_count
    from ideogram4.text_encoder_checkpoint import load_text_encoder

    models_dir = tiny.write_models(tmp_path_factory.mktemp("models"))
    comfy_inprocess.register_models(models_dir)
    nodes = host.nodes
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    prompt = "a cat holding a sign that says hello"
    node_dtype = next(encoder.loaded.encoder.parameters()).dtype
    core = load_text_encoder(models_dir / "text_encoders" / tiny.TEXT_ENCODER_FILE, dtype=node_dtype,
                             host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    slots = image_slot_count(96, 64)
    expected, _ = core.encode([prompt], image_slots=slots)
    text_alone, _ = core.encode([prompt])

    # On the CPU the trailing slots leave the features bit-unchanged, so also record what reaches the encoder.
    seen_slots = []
    hook = encoder.loaded.encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen_slots.append(kwargs.get("image_slots")), with_kwargs=True)
    try:
        (conditioning,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                                   prompt=prompt, official_width=96, official_height=64)
        assert torch.equal(conditioning[0][0], expected)
        (conditioning,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                                   prompt=prompt, official_width=96, official_height=0)
        assert torch.equal(conditioning[0][0], text_alone)
    finally:
        hook.remove()
    assert seen_slots == [24, 0]
    with pytest.raises(ValueError, match="official_height must be a positive multiple of 16.*got 60"):
        comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncode, text_encoder=encoder, prompt=prompt,
                                 official_width=96, official_height=60)
