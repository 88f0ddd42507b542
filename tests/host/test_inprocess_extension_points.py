"""In-process host tests of ComfyUI's extension points on the pack's MODELs (run in the host's Python; see
comfy_inprocess.py): wrappers and block patches of other nodes run during sampling (pack Sampler and native
SamplerCustomAdvanced with the Ideogram 4 Guider), both patchers are prepared and cleaned even when sampling
fails, and ComfyUI's precision flags choose the compute dtype.
"""

from __future__ import annotations

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import test_inprocess_sampler as sampling  # noqa: E402  (the sampling runs and their settings)
import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

WRAPPER_KEY = "ideogram4_reference_test"
STEPS = sampling.STEPS


def run_pack_sampler(host, cond, uncond, conditioning):
    return sampling.run_pack_sampler(host, (cond, uncond, conditioning))


def run_native_path(host, cond, uncond, conditioning):
    """Ideogram 4 Scheduler + Guider + Noise with native KSamplerSelect(euler) and SamplerCustomAdvanced."""
    (empty,) = comfy_inprocess.run_node(host.nodes.noise_latent.EmptyLatent, width=sampling.WIDTH,
                                        height=sampling.HEIGHT, batch_size=1)
    return sampling.run_native_path(host, (cond, uncond, conditioning), empty)


SAMPLING_PATHS = {"pack Sampler": run_pack_sampler, "SamplerCustomAdvanced + Guider": run_native_path}
each_sampling_path = pytest.mark.parametrize("run", list(SAMPLING_PATHS.values()), ids=list(SAMPLING_PATHS))


def recording_wrapper(calls: list, name: str):
    """A wrapper as other nodes write them: reads the native arguments, records them, calls on."""

    def wrapper(executor, *args, **kwargs):
        options = args[-1] if isinstance(args[-1], dict) else kwargs["transformer_options"]
        calls.append((name, tuple(args[0].shape), float(options["sigmas"].reshape(-1)[0]),
                      tuple(options["cond_or_uncond"]), "sample_sigmas" in options))
        return executor(*args, **kwargs)

    return wrapper


def with_diffusion_model_wrapper(patcher, calls, name):
    import comfy.patcher_extension

    clone = patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                               recording_wrapper(calls, name))
    return clone


@each_sampling_path
def test_diffusion_model_wrappers_of_both_models_run_every_step_and_change_nothing(host, pack_models, run):
    cond, uncond, conditioning = pack_models
    plain = run(host, cond, uncond, conditioning)
    calls = []
    wrapped = run(host, with_diffusion_model_wrapper(cond, calls, "cond"),
                  with_diffusion_model_wrapper(uncond, calls, "uncond"), conditioning)
    assert torch.equal(wrapped, plain)
    latent_shape = (1, 128, sampling.HEIGHT // 16, sampling.WIDTH // 16)
    assert [call[0] for call in calls] == ["cond", "uncond"] * STEPS
    assert all(call[1] == latent_shape and call[4] for call in calls)
    assert [call[3] for call in calls] == [(0,), (1,)] * STEPS
    sigmas = [call[2] for call in calls[::2]]
    assert sigmas == sorted(sigmas, reverse=True) and len(set(sigmas)) == STEPS  # one call pair per step


def test_apply_model_wrappers_run_on_the_native_path(host, pack_models):
    import comfy.patcher_extension

    cond, uncond, conditioning = pack_models
    calls = []
    patchers = []
    for patcher, name in ((cond, "cond"), (uncond, "uncond")):
        clone = patcher.clone()
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                   recording_wrapper(calls, name))
        patchers.append(clone)
    run_native_path(host, *patchers, conditioning)
    assert [call[0] for call in calls] == ["cond", "uncond"] * STEPS


@each_sampling_path
def test_block_replace_patches_see_every_block_and_can_call_the_original(host, pack_models, run):
    cond, uncond, conditioning = pack_models
    plain = run(host, cond, uncond, conditioning)
    seen = []

    def replace(args, extra):
        options = args["transformer_options"]
        seen.append((options["block_index"], options["total_blocks"], options["block_type"]))
        return extra["original_block"](args)

    patched = cond.clone()
    for index in range(tiny.DIT_CONFIG.num_layers):
        patched.set_model_patch_replace(replace, "dit", "single_block", index)
    assert torch.equal(run(host, patched, uncond, conditioning), plain)
    layers = tiny.DIT_CONFIG.num_layers
    assert seen == [(index, layers, "single") for index in range(layers)] * STEPS

    # A patch that changes a block's output changes the result.
    def zero_block(args, extra):
        return {"img": torch.zeros_like(args["img"])}

    changed = cond.clone()
    changed.set_model_patch_replace(zero_block, "dit", "single_block", 0)
    assert not torch.equal(run(host, changed, uncond, conditioning), plain)


class Failure(RuntimeError):
    pass


@each_sampling_path
def test_an_exception_mid_sampling_still_cleans_both_patchers_and_the_next_run_succeeds(host, pack_models, run):
    import comfy.patcher_extension

    cond, uncond, conditioning = pack_models
    expected = run(host, cond, uncond, conditioning)
    events = []
    patchers = []
    for patcher, name in ((cond, "cond"), (uncond, "uncond")):
        clone = patcher.clone()
        for event, kind in (("pre_run", comfy.patcher_extension.CallbacksMP.ON_PRE_RUN),
                            ("cleanup", comfy.patcher_extension.CallbacksMP.ON_CLEANUP)):
            clone.add_callback(kind, lambda unused, event=event, name=name: events.append((event, name)))
        patchers.append(clone)
    steps_run = []

    def fail_on_second_step(executor, *args, **kwargs):
        steps_run.append(1)
        if len(steps_run) > 2:  # the first step's cond and uncond passes went through
            raise Failure("a wrapper failed")
        return executor(*args, **kwargs)

    patchers[1].add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                     fail_on_second_step)
    with pytest.raises(Failure):
        run(host, *patchers, conditioning)
    for name in ("cond", "uncond"):
        assert events.count(("pre_run", name)) == 1 and events.count(("cleanup", name)) == 1, events
        assert events.index(("pre_run", name)) < events.index(("cleanup", name))
        assert patchers[0].model.current_patcher is None and patchers[1].model.current_patcher is None

    # The same patchers sample normally afterwards, each prepared and cleaned once more.
    events.clear()
    patchers[1].remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    assert torch.equal(run(host, *patchers, conditioning), expected)
    assert sorted(events) == sorted([("pre_run", "cond"), ("pre_run", "uncond"), ("cleanup", "cond"),
                                     ("cleanup", "uncond")])


@pytest.mark.parametrize("flag, dtype", [("bf16_unet", torch.bfloat16), ("fp32_unet", torch.float32)])
def test_unet_precision_flags_choose_the_dit_compute_dtype(host, models, monkeypatch, flag, dtype):
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, flag, True)
    cond, uncond = comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=tiny.COND_FILE,
                                            uncond_model_name=tiny.UNCOND_FILE, weight_dtype="default")
    seen = []
    handle = cond.model.diffusion_model.input_proj.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].dtype))
    try:
        (encoder,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncoderLoader,
                                              text_encoder_name=tiny.TEXT_ENCODER_FILE)
        (conditioning,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                                   prompt="a red wall")
        run_pack_sampler(host, cond, uncond, conditioning)
    finally:
        handle.remove()
    assert host.nodes.compat.inference_dtype(cond.model) == dtype
    assert seen and set(seen) == {dtype}


def test_without_flags_the_cpu_computes_in_fp32(host):
    import comfy.model_management

    precision = host.nodes.precision
    cpu = comfy.model_management.get_torch_device()
    assert precision.dit_compute_dtype(cpu) == torch.float32
    assert precision.text_encoder_compute_dtype(cpu) == torch.float32


def test_a_flag_for_a_dtype_ideogram_does_not_compute_in_is_reported(host, monkeypatch, caplog):
    import comfy.cli_args
    import comfy.model_management

    monkeypatch.setattr(comfy.cli_args.args, "fp16_unet", True)
    with caplog.at_level("WARNING"):
        dtype = host.nodes.precision.dit_compute_dtype(comfy.model_management.get_torch_device())
    assert dtype == torch.float32
    assert "--fp16-unet is not used" in caplog.text


@pytest.mark.parametrize("flag, dtype", [("bf16_text_enc", torch.bfloat16), ("fp32_text_enc", torch.float32)])
def test_text_encoder_precision_flags_choose_its_compute_dtype(host, models, monkeypatch, flag, dtype):
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, flag, True)
    (encoder,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    seen = []
    module = next(m for m in encoder.loaded.encoder.modules() if isinstance(m, torch.nn.Linear))
    handle = module.register_forward_hook(lambda m, inputs, output: seen.append(output.dtype))
    try:
        encoder.encode("a red wall")
    finally:
        handle.remove()
    assert seen and set(seen) == {dtype}


@pytest.mark.parametrize("flag, dtype", [("bf16_vae", torch.bfloat16), ("fp32_vae", torch.float32)])
def test_vae_precision_flags_choose_its_compute_dtype(host, models, monkeypatch, flag, dtype):
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, flag, True)
    (vae,) = comfy_inprocess.run_node(host.nodes.vae_nodes.VAELoader, vae_name=tiny.VAE_FILE)
    seen = []
    conv = next(m for name, m in vae.patcher.model.named_modules()
                if name.startswith("decoder.") and isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, inputs, output: seen.append(output.dtype))
    try:
        vae.decode(torch.randn((1, 128, 2, 2), generator=torch.Generator().manual_seed(1)))
    finally:
        handle.remove()
    assert seen and set(seen) == {dtype}
