"""In-process host tests of the pack's guards (run in the host's Python; see comfy_inprocess.py).

* a Cancel stops a forward within one transformer block (the DiT's block callback), and the next run succeeds;
* a size whose activations cannot fit the load device is refused before any model loads, saying what fits;
* the DiT Loader checks the cond/uncond pair from the headers before loading either model, and warns on the node
  when the names say the files sit in the wrong slots;
* input-only rules answer at queue time (``validate_inputs``), and what a link feeds is checked when the node runs;
* a guidance schedule typed under a preset is noted on the node; prompts that cannot be encoded are refused.
"""

from __future__ import annotations

import contextlib
import math
import shutil

import pytest

import comfy_inprocess
from comfy_inprocess import sampler_inputs

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

SWAPPED_COND = "ideogram4_unconditional_copy.safetensors"  # the uncond weights under an "unconditional" name


def add_named_copies(models_dir):
    folder = models_dir / "diffusion_models"
    shutil.copy(folder / tiny.UNCOND_FILE, folder / SWAPPED_COND)


@pytest.fixture(scope="module")
def add_model_files():
    return add_named_copies


@contextlib.contextmanager
def cancel_during_first_block(patcher):
    """Presses Cancel while block 0 of the model's first forward runs; yields the indices of the blocks that ran
    and expects the body to end in ComfyUI's interruption exception."""
    import comfy.model_management

    blocks = patcher.model.velocity_model().layers
    ran = []
    hooks = [block.register_forward_pre_hook(lambda module, args, index=index: ran.append(index))
             for index, block in enumerate(blocks)]
    hooks.append(blocks[0].register_forward_hook(
        lambda module, args, output: comfy.model_management.interrupt_current_processing(True)))
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            yield ran
    finally:
        for hook in hooks:
            hook.remove()
        comfy.model_management.interrupt_current_processing(False)


def test_cancel_stops_within_one_transformer_block_and_the_next_run_succeeds(host, pack_models):
    cond, _, _ = pack_models
    assert len(cond.model.velocity_model().layers) == 2
    inputs = sampler_inputs(pack_models)
    with cancel_during_first_block(cond) as ran:
        comfy_inprocess.run_node(host.nodes.sampler_node.Sampler, **inputs)
    assert ran == [0]  # block 1 of that forward never ran
    (latent,) = comfy_inprocess.run_node(host.nodes.sampler_node.Sampler, **inputs)
    assert latent["samples"].shape == (1, 128, 2, 2) and bool(latent["samples"].isfinite().all())


def test_cancel_inside_a_forward_of_native_sampler_custom_advanced(host, pack_models):
    """The same block callback stops the Guider path (the model runs through ComfyUI's apply_model)."""
    nodes = host.nodes
    cond, uncond, conditioning = pack_models
    (sigmas,) = comfy_inprocess.run_node(nodes.scheduler_guider.Scheduler, preset="Custom", steps=2, mu=0.0, std=1.75,
                                         width=32, height=32, denoise=1.0)
    (guider,) = comfy_inprocess.run_node(nodes.scheduler_guider.Guider, cond_model=cond, uncond_model=uncond,
                                         conditioning=conditioning, preset="Custom", steps=2, guidance_schedule="7,3")
    (noise,) = comfy_inprocess.run_node(nodes.noise_latent.Noise, seed=0)
    (latent,) = comfy_inprocess.run_node(nodes.noise_latent.EmptyLatent, width=32, height=32, batch_size=1)
    (sampler,) = comfy_inprocess.run_node(
        comfy_inprocess.native_node("comfy_extras.nodes_custom_sampler", "KSamplerSelect"), sampler_name="euler")
    advanced = comfy_inprocess.native_node("comfy_extras.nodes_custom_sampler", "SamplerCustomAdvanced")
    with cancel_during_first_block(cond) as ran:
        comfy_inprocess.run_node(advanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                 latent_image=latent)
    assert ran == [0]


def test_a_size_whose_activations_cannot_fit_the_device_is_refused_before_loading(host, pack_models, monkeypatch):
    import comfy.model_management

    from ideogram4.limits import activation_bytes_per_token

    cond, _, conditioning = pack_models
    config = cond.model.velocity_model().config
    text_tokens = conditioning[0][0].shape[1]
    element = host.nodes.compat.inference_dtype(cond.model).itemsize
    per_row = activation_bytes_per_token(config, element)
    # A device with room for exactly 20 x 20 image tokens plus the text: 320 px fits, 336 does not.
    total = (400 + text_tokens) * per_row
    monkeypatch.setattr(comfy.model_management, "get_total_memory", lambda *args, **kwargs: total)
    loads = []
    monkeypatch.setattr(comfy.model_management, "load_models_gpu", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(ValueError) as info:
        comfy_inprocess.run_node(host.nodes.sampler_node.Sampler, **sampler_inputs(pack_models, width=336,
                                                                                   height=336))
    message = str(info.value)
    assert message.startswith("Ideogram 4 Sampler: a 336x336 image at batch 1 needs about")
    assert "at most about 320x320 fits at batch 1" in message and "Lower width/height or batch_size" in message
    assert loads == []  # refused before any model was loaded

    (guider,) = comfy_inprocess.run_node(host.nodes.scheduler_guider.Guider, cond_model=cond,
                                         uncond_model=pack_models[1], conditioning=conditioning, preset="Custom",
                                         steps=2, guidance_schedule="7,3")
    import torch

    with pytest.raises(ValueError, match=r"Ideogram 4 Guider: a 336x336 image.*at most about 320x320 fits"):
        guider.check_image_size(torch.zeros(1, 128, 21, 21))
    guider.check_image_size(torch.zeros(1, 128, 20, 20))  # fits: no error


def test_dit_loader_checks_the_pair_from_the_headers_before_loading_either_model(host, models, monkeypatch):
    import dataclasses

    from safetensors.torch import save_file

    three_layers = dataclasses.replace(tiny.DIT_CONFIG, num_layers=3)
    save_file(tiny.dit_state_dict(seed=3, config=three_layers),
              str(models / "diffusion_models" / "ideogram4_other_uncond.safetensors"))
    loader_module = host.nodes.dit_loader
    loaded = []
    original = loader_module.load_dit_checkpoint
    monkeypatch.setattr(loader_module, "load_dit_checkpoint", lambda *a, **k: loaded.append(a) or original(*a, **k))
    import folder_paths

    folder_paths.filename_list_cache.clear()
    with pytest.raises(ValueError, match="do not match"):
        comfy_inprocess.run_node(loader_module.DiTLoader, cond_model_name=tiny.COND_FILE,
                                 uncond_model_name="ideogram4_other_uncond.safetensors", weight_dtype="default")
    assert loaded == []
    with pytest.raises(ValueError, match="the same file"):
        comfy_inprocess.run_node(loader_module.DiTLoader, cond_model_name=tiny.COND_FILE,
                                 uncond_model_name=tiny.COND_FILE, weight_dtype="default")
    assert loaded == []


def test_dit_loader_warns_on_the_node_when_the_names_say_the_slots_are_swapped(host, models):
    loader = host.nodes.dit_loader.DiTLoader
    good = loader.execute(cond_model_name=tiny.COND_FILE, uncond_model_name=tiny.UNCOND_FILE)
    assert list(good.ui.as_dict()["text"]) == [""]
    swapped = loader.execute(cond_model_name=SWAPPED_COND, uncond_model_name=tiny.COND_FILE)
    (text,) = swapped.ui.as_dict()["text"]
    assert f"cond_model_name {SWAPPED_COND} looks like the unconditional transformer" in text
    assert f"uncond_model_name {tiny.COND_FILE} does not look like the unconditional transformer" in text


@pytest.mark.parametrize("node, inputs, says", [
    ("sampler_node.Sampler", dict(width=250, height=256), "width must be a positive multiple of 16 pixels"),
    ("sampler_node.Sampler", dict(width=8192, height=256), "width is 8192 px, above the limit of 4096 px"),
    ("sampler_node.Sampler", dict(preset="Custom", steps=20, guidance_schedule="7x5,3x2"), "expects 20 values"),
    ("sampler_node.Sampler", dict(preset="Custom", mu=math.nan), "mu is nan, which is not a finite number"),
    ("sampler_node.Sampler", dict(std=math.inf), "std is inf, which is not a finite number"),
    ("sampler_node.Sampler", dict(steps=0), "steps is 0, outside 1 .. 500"),
    ("sampler_node.Sampler", dict(preset="Fast 4"), "preset 'Fast 4' is not one of"),
    ("scheduler_guider.Scheduler", dict(height=100), "height must be a positive multiple of 16"),
    ("scheduler_guider.Guider", dict(preset="Custom", steps=3, guidance_schedule="7,,3"), "stray comma"),
    ("noise_latent.EmptyLatent", dict(width=4112), "above the limit of 4096 px"),
    ("text_encoder_nodes.TextEncode", dict(official_width=250), "official_width must be a positive multiple"),
    ("text_encoder_nodes.TextEncode", dict(prompt="bad \ud800 text"), "lone surrogate '\\ud800' at position 4"),
    ("text_encoder_nodes.TextEncode", dict(prompt="a\x00b"), "NUL character (U+0000) at position 1"),
    ("text_encoder_nodes.TextEncode", dict(prompt="  "), "the prompt is empty"),
])
def test_input_only_rules_answer_when_the_prompt_is_queued(host, node, inputs, says):
    module_name, class_name = node.split(".")
    node_class = getattr(getattr(host.nodes, module_name), class_name)
    result = node_class.validate_inputs(**inputs)
    assert isinstance(result, str) and says in result, result
    assert result.startswith("Ideogram 4 ")


def test_valid_and_linked_inputs_pass_validation(host):
    nodes = host.nodes
    assert nodes.sampler_node.Sampler.validate_inputs(preset="Default 20", steps=20, mu=0.0, std=1.75,
                                                      guidance_schedule="7x18,3x2", width=1024, height=1024) is True
    # Values fed by links are None when the prompt is queued; they are checked when the node runs.
    assert nodes.sampler_node.Sampler.validate_inputs(width=None, height=None) is True
    assert nodes.text_encoder_nodes.TextEncode.validate_inputs(prompt="a cat", official_width=0) is True


def test_linked_values_are_checked_when_the_node_runs(host, pack_models):
    nodes = host.nodes
    with pytest.raises(ValueError, match=r"^Ideogram 4 Sampler: mu is nan"):
        comfy_inprocess.run_node(nodes.sampler_node.Sampler, **sampler_inputs(pack_models, mu=math.nan))
    with pytest.raises(ValueError, match=r"^Ideogram 4 Scheduler: std is nan"):
        comfy_inprocess.run_node(nodes.scheduler_guider.Scheduler, preset="Custom", steps=2, mu=0.0, std=math.nan,
                                 width=32, height=32, denoise=1.0)
    with pytest.raises(ValueError, match=r"^Ideogram 4 Sampler: width is 4352 px, above the limit"):
        comfy_inprocess.run_node(nodes.sampler_node.Sampler, **sampler_inputs(pack_models, width=4352))


def test_a_guidance_schedule_under_a_preset_is_noted_on_the_node(host, pack_models):
    sampler = host.nodes.sampler_node.Sampler
    noted = sampler.execute(**sampler_inputs(pack_models, preset="Turbo 12", guidance_schedule="5x12"))
    (text,) = noted.ui.as_dict()["text"]
    assert text == "guidance_schedule '5x12' is ignored: preset 'Turbo 12' uses its own schedule. Choose preset " \
                   "Custom to use it."
    # The default string, or the preset's own schedule written out, is not a note.
    for schedule in ("7x18,3x2", "7x11,3"):
        quiet = sampler.execute(**sampler_inputs(pack_models, preset="Turbo 12", guidance_schedule=schedule))
        assert list(quiet.ui.as_dict()["text"]) == [""]


def test_prompts_that_cannot_be_encoded_are_refused_when_linked(host, pack_models, models):
    nodes = host.nodes
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    with pytest.raises(ValueError, match=r"^Ideogram 4 Text Encode: the prompt holds a lone surrogate"):
        comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncode, text_encoder=encoder, prompt="bad \ud800 text")
    shown = nodes.text_encoder_nodes.TextEncode.execute(text_encoder=encoder, prompt="price \u202e01$")
    (text,) = shown.ui.as_dict()["text"]
    assert "1 invisible bidirectional control character(s) (U+202E at 6)" in text
