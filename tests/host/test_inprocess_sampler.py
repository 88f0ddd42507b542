"""In-process host tests of the sampling nodes against the core sampler (run in the host's Python; see
comfy_inprocess.py). Tiny random weights in real file layouts; CPU.

* Ideogram 4 Sampler: LATENT bit-identical to ideogram4.sampler.sample run with plain-torch models built from
  the same files (txt2img and img2img);
* Scheduler + Guider + pack Noise + native SamplerCustomAdvanced with euler: within 1e-5 of the pack sampler;
* the progress bar advances once per step and a Cancel stops sampling within one step.
"""

from __future__ import annotations

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)

WIDTH, HEIGHT = 64, 48  # 4 x 3 tokens
SEED = 1234
PROMPT = '{"compositional_deconstruction":{"background":"a red wall","elements":[]}}'
STEPS, MU, STD, GUIDANCE = 4, 0.0, 1.75, "7x3,3"


@pytest.fixture(scope="module")
def prompt():
    return PROMPT


@pytest.fixture(scope="module")
def core_models(host, models):
    """The oracle: plain-torch core modules (no comfy ops) from the same files, and the prompt's features."""
    from ideogram4.dit import Ideogram4DiT
    from ideogram4.dit_checkpoint import load_dit_checkpoint
    from ideogram4.text_encoder_checkpoint import load_text_encoder

    dits = []
    for name in (tiny.COND_FILE, tiny.UNCOND_FILE):
        checkpoint = load_dit_checkpoint(models / "diffusion_models" / name, dtype=torch.float32)
        dit = Ideogram4DiT(checkpoint.config)
        dit.load_state_dict(checkpoint.state_dict, strict=True)
        dits.append(dit.eval())
    encoder = load_text_encoder(models / "text_encoders" / tiny.TEXT_ENCODER_FILE, dtype=torch.float32,
                                host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    features, _ = encoder.encode([PROMPT])
    return dits[0], dits[1], features


def core_latent(core_models, batch=1, clean_latent=None, denoise=1.0):
    """What the official loop gives for the module's settings, in the LATENT layout."""
    from ideogram4.guidance import parse_guidance_schedule
    from ideogram4.latent import comfy_latent_to_tokens, tokens_to_comfy_latent
    from ideogram4.sampler import img2img_start, make_noise, sample
    from ideogram4.schedule import logit_normal_schedule
    from ideogram4.velocity import conditional_velocity, unconditional_velocity

    cond, uncond, features = core_models
    grid_h, grid_w = HEIGHT // 16, WIDTH // 16
    times = logit_normal_schedule(STEPS, MU, STD, WIDTH, HEIGHT)
    guidance = parse_guidance_schedule(GUIDANCE, STEPS)
    start = make_noise(batch, grid_h * grid_w, SEED, "cpu")
    if clean_latent is not None:
        times, guidance, start = img2img_start(times, guidance, denoise, comfy_latent_to_tokens(clean_latent), start)
    features = features.expand(batch, -1, -1)
    tokens = sample(lambda z, t: conditional_velocity(cond, z, t, features, None, grid_h, grid_w),
                    lambda z, t: unconditional_velocity(uncond, z, t, grid_h, grid_w),
                    times, guidance, start)
    return tokens_to_comfy_latent(tokens, grid_h, grid_w)


def run_pack_sampler(host, pack_models, batch=1, latent=None, denoise=1.0):
    cond, uncond, conditioning = pack_models
    inputs = dict(cond_model=cond, uncond_model=uncond, conditioning=conditioning, preset="Custom", steps=STEPS,
                  mu=MU, std=STD, guidance_schedule=GUIDANCE, seed=SEED, width=WIDTH, height=HEIGHT,
                  batch_size=batch, denoise=denoise)
    if latent is not None:
        inputs["latent"] = latent
    (out,) = comfy_inprocess.run_node(host.nodes.sampler_node.Sampler, **inputs)
    return out["samples"]


def run_native_path(host, pack_models, latent, denoise=1.0):
    """Ideogram 4 Scheduler + Guider + Noise with native KSamplerSelect(euler) and SamplerCustomAdvanced."""
    nodes = host.nodes
    cond, uncond, conditioning = pack_models
    (sigmas,) = comfy_inprocess.run_node(nodes.scheduler_guider.Scheduler, preset="Custom", steps=STEPS, mu=MU,
                                         std=STD, width=WIDTH, height=HEIGHT, denoise=denoise)
    (guider,) = comfy_inprocess.run_node(nodes.scheduler_guider.Guider, cond_model=cond, uncond_model=uncond,
                                         conditioning=conditioning, preset="Custom", steps=STEPS,
                                         guidance_schedule=GUIDANCE)
    (noise,) = comfy_inprocess.run_node(nodes.noise_latent.Noise, seed=SEED)
    select = comfy_inprocess.native_node("comfy_extras.nodes_custom_sampler", "KSamplerSelect")
    (sampler,) = comfy_inprocess.run_node(select, sampler_name="euler")
    advanced = comfy_inprocess.native_node("comfy_extras.nodes_custom_sampler", "SamplerCustomAdvanced")
    out = comfy_inprocess.run_node(advanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                   latent_image=latent)
    return out[0]["samples"]


def test_pack_sampler_is_bit_identical_to_the_core_sampler(host, pack_models, core_models):
    expected = core_latent(core_models)
    actual = run_pack_sampler(host, pack_models)
    assert actual.shape == (1, 128, HEIGHT // 16, WIDTH // 16)
    assert actual.dtype == torch.float32
    assert torch.equal(actual, expected)


def test_pack_sampler_batch_draws_one_noise_tensor_for_the_batch(host, pack_models, core_models):
    expected = core_latent(core_models, batch=2)
    actual = run_pack_sampler(host, pack_models, batch=2)
    assert torch.equal(actual, expected)
    assert not torch.equal(actual[0], actual[1])


def test_pack_sampler_img2img_is_bit_identical_to_the_core_img2img(host, pack_models, core_models):
    clean = torch.randn((1, 128, HEIGHT // 16, WIDTH // 16), generator=torch.Generator().manual_seed(5))
    expected = core_latent(core_models, clean_latent=clean, denoise=0.5)
    actual = run_pack_sampler(host, pack_models, latent={"samples": clean}, denoise=0.5)
    assert torch.equal(actual, expected)
    # A partial denoise really starts from the image: the result differs from text-to-image.
    assert not torch.equal(actual, core_latent(core_models))


def test_scheduler_guider_with_native_sampler_custom_advanced_matches_the_pack_sampler(host, pack_models):
    (empty,) = comfy_inprocess.run_node(host.nodes.noise_latent.EmptyLatent, width=WIDTH, height=HEIGHT,
                                        batch_size=1)
    native = run_native_path(host, pack_models, empty)
    pack = run_pack_sampler(host, pack_models)
    assert native.shape == pack.shape
    assert torch.allclose(native, pack, rtol=0, atol=1e-5), (native - pack).abs().max()
    assert not torch.equal(native, torch.zeros_like(native))


def test_native_path_img2img_matches_the_pack_sampler_img2img(host, pack_models):
    clean = torch.randn((1, 128, HEIGHT // 16, WIDTH // 16), generator=torch.Generator().manual_seed(5))
    native = run_native_path(host, pack_models, {"samples": clean}, denoise=0.5)
    pack = run_pack_sampler(host, pack_models, latent={"samples": clean}, denoise=0.5)
    assert torch.allclose(native, pack, rtol=0, atol=1e-5), (native - pack).abs().max()


def test_noise_node_gives_the_official_noise_in_the_latent_layout(host):
    from ideogram4.latent import tokens_to_comfy_latent
    from ideogram4.sampler import make_noise

    nodes = host.nodes
    (empty,) = comfy_inprocess.run_node(nodes.noise_latent.EmptyLatent, width=WIDTH, height=HEIGHT, batch_size=2)
    assert torch.equal(empty["samples"], torch.zeros(2, 128, HEIGHT // 16, WIDTH // 16))
    (noise,) = comfy_inprocess.run_node(nodes.noise_latent.Noise, seed=SEED)
    assert noise.seed == SEED
    expected = tokens_to_comfy_latent(make_noise(2, (HEIGHT // 16) * (WIDTH // 16), SEED, "cpu"), HEIGHT // 16,
                                      WIDTH // 16)
    assert torch.equal(noise.generate_noise(empty), expected)


def test_guider_applies_the_guidance_of_each_step(host, pack_models):
    """The guider's step lookup gives list[i] at sigma_i, and the tail of the list for a shorter schedule."""
    guider_module = host.nodes.scheduler_guider
    cond, uncond, conditioning = pack_models
    guider = guider_module.Ideogram4Guider(cond, uncond, [7.0, 6.0, 5.0, 3.0])
    sigmas = guider_module.schedule_sigmas(STEPS, MU, STD, WIDTH, HEIGHT)
    options = {"transformer_options": {"sample_sigmas": sigmas}}
    assert [guider.guidance_for(sigmas[i:i + 1], options) for i in range(STEPS)] == [7.0, 6.0, 5.0, 3.0]
    tail = sigmas[2:]
    tail_options = {"transformer_options": {"sample_sigmas": tail}}
    assert [guider.guidance_for(tail[i:i + 1], tail_options) for i in range(2)] == [5.0, 3.0]


def test_scheduler_sigmas_are_one_minus_the_official_times(host):
    from ideogram4.schedule import logit_normal_schedule

    (sigmas,) = comfy_inprocess.run_node(host.nodes.scheduler_guider.Scheduler, preset="Default 20", steps=1, mu=9.0,
                                         std=9.0, width=1024, height=1024, denoise=1.0)
    times = logit_normal_schedule(20, 0.0, 1.75, 1024, 1024)
    # float64 on CPU, so that 1 - sigma gives the official float32 times back exactly.
    assert sigmas.dtype == torch.float64 and len(sigmas) == 21
    assert (1.0 - sigmas).tolist() == times
    assert torch.equal(sigmas.float(), 1.0 - torch.tensor(times, dtype=torch.float32))
    assert float(sigmas[-1]) > 0  # no forced final 0: the official loop stops at t_max
    (tail,) = comfy_inprocess.run_node(host.nodes.scheduler_guider.Scheduler, preset="Default 20", steps=1, mu=0.0,
                                       std=1.0, width=1024, height=1024, denoise=0.5)
    assert torch.equal(tail, sigmas[10:])


def test_progress_bar_advances_every_step_and_cancel_stops_within_one_step(host, pack_models, monkeypatch):
    import comfy.model_management

    # ComfyUI throttles what reaches the UI by time; the node's duty is one update_absolute per step.
    updates = comfy_inprocess.record_progress(monkeypatch)
    run_pack_sampler(host, pack_models)
    assert updates == [(step, STEPS) for step in range(1, STEPS + 1)]

    # Cancel pressed during step 2 (right after step 1 reported): the next model call raises, step 2 never ends.
    calls = []
    cond_dit = pack_models[0].model.diffusion_model
    forward = type(cond_dit).forward

    def counting_forward(module, x, *args, **kwargs):
        if x.ndim == 4:  # ComfyUI's diffusion-model call (the core forward it runs inside is not counted again)
            calls.append(1)
        return forward(module, x, *args, **kwargs)

    monkeypatch.setattr(type(cond_dit), "forward", counting_forward)
    updates = comfy_inprocess.record_progress(monkeypatch, interrupt=True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run_pack_sampler(host, pack_models)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert updates == [(1, STEPS)]
    assert len(calls) == 2  # step 1's cond and uncond passes; nothing of step 2 ran


def test_latent_previews_use_the_flux2_latent_format_where_the_host_has_it(host, pack_models, monkeypatch):
    import comfy.latent_formats
    import comfy.utils
    import latent_preview

    previews = []
    original = comfy.utils.ProgressBar.update_absolute

    def record(bar, value, total=None, preview=None):
        previews.append(preview)
        return original(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", record)
    monkeypatch.setattr(latent_preview.args, "preview_method", latent_preview.LatentPreviewMethod.Latent2RGB)
    run_pack_sampler(host, pack_models)
    assert len(previews) == STEPS
    if hasattr(comfy.latent_formats, "Flux2"):
        assert all(preview is not None and preview[0] == "JPEG" for preview in previews)
        width, height = previews[-1][1].size
        assert (width, height) == (WIDTH // 8, HEIGHT // 8)  # FLUX.2 Latent2RGB unpacks the 2x2 patches
    else:
        assert previews == [None] * STEPS  # no RGB factors for a 128-channel latent on this host


def test_pack_sampler_denoise_zero_returns_the_input_latent(host, pack_models):
    clean = torch.randn((1, 128, HEIGHT // 16, WIDTH // 16), generator=torch.Generator().manual_seed(7))
    actual = run_pack_sampler(host, pack_models, latent={"samples": clean}, denoise=0.0)
    assert torch.equal(actual, clean)


def test_pack_sampler_denoise_keeping_no_step_names_the_node_and_the_fix(host, pack_models):
    clean = torch.zeros((1, 128, HEIGHT // 16, WIDTH // 16))
    # 4 steps * 0.1 rounds to 0 kept steps.
    with pytest.raises(ValueError, match=r"^Ideogram 4 Sampler: denoise 0\.1 keeps 0 of 4 steps; use denoise >= 0\.25"):
        run_pack_sampler(host, pack_models, latent={"samples": clean}, denoise=0.1)


def test_pack_sampler_left_aligns_right_padded_conditioning(host, pack_models):
    """A native-style CONDITIONING (features right-padded with an attention_mask) gives the unpadded result."""
    cond, uncond, conditioning = pack_models
    features = conditioning[0][0]
    length = features.shape[1]
    padded = torch.cat([features, torch.randn((1, 3, features.shape[2]), generator=torch.Generator().manual_seed(8))],
                       dim=1)
    mask = torch.tensor([[1] * length + [0] * 3])
    expected = run_pack_sampler(host, pack_models)
    actual = run_pack_sampler(host, (cond, uncond, [[padded, {"attention_mask": mask}]]))
    assert torch.equal(actual, expected)


def test_preview_shows_the_clean_image_estimate_of_each_step(host):
    """On a straight flow path z_t = t x0 + (1 - t) eps with the exact velocity x0 - eps, Euler steps stay on the
    path, so the preview estimate z_s + (1 - s) v must be x0 itself after every step (hand-computed oracle)."""
    x0, eps = torch.randn(1, 6, 128), torch.randn(1, 6, 128)
    times = [0.1, 0.4, 0.9]
    reporter = host.nodes.progress.StepReporter(2, 2, 3, times=times, start_tokens=times[0] * x0 + (1 - times[0]) * eps)
    for step, s in enumerate(times[1:]):
        z_s = s * x0 + (1 - s) * eps
        assert torch.allclose(reporter.preview_tokens(step, z_s), x0, atol=1e-5)


def half_mask_latent(clean_seed=5):
    """A start latent and an inpainting mask at image resolution: the right half (two token columns) re-sampled."""
    clean = torch.randn((1, 128, HEIGHT // 16, WIDTH // 16), generator=torch.Generator().manual_seed(clean_seed))
    mask = torch.zeros((1, HEIGHT, WIDTH))
    mask[:, :, WIDTH // 2:] = 1.0
    return clean, mask


def core_inpaint_latent(core_models, clean, mask_tokens, denoise):
    """The core loop with the mask as the oracle (hand-resized mask: token columns 2 and 3 re-sampled)."""
    from ideogram4.guidance import parse_guidance_schedule
    from ideogram4.latent import comfy_latent_to_tokens, tokens_to_comfy_latent
    from ideogram4.sampler import InpaintRegion, img2img_start, make_noise, sample
    from ideogram4.schedule import logit_normal_schedule
    from ideogram4.velocity import conditional_velocity, unconditional_velocity

    cond, uncond, features = core_models
    grid_h, grid_w = HEIGHT // 16, WIDTH // 16
    noise = make_noise(1, grid_h * grid_w, SEED, "cpu")
    clean_tokens = comfy_latent_to_tokens(clean)
    times, guidance, start = img2img_start(logit_normal_schedule(STEPS, MU, STD, WIDTH, HEIGHT),
                                           parse_guidance_schedule(GUIDANCE, STEPS), denoise, clean_tokens, noise)
    tokens = sample(lambda z, t: conditional_velocity(cond, z, t, features, None, grid_h, grid_w),
                    lambda z, t: unconditional_velocity(uncond, z, t, grid_h, grid_w),
                    times, guidance, start, inpaint=InpaintRegion(mask_tokens, clean_tokens, noise))
    return tokens_to_comfy_latent(tokens, grid_h, grid_w)


@pytest.mark.parametrize("denoise", [1.0, 0.5])
def test_pack_sampler_inpaints_only_the_masked_region(host, pack_models, core_models, denoise):
    from ideogram4.latent import comfy_latent_to_tokens

    clean, mask = half_mask_latent()
    actual = run_pack_sampler(host, pack_models, latent={"samples": clean, "noise_mask": mask}, denoise=denoise)
    # The kept half comes back as it went in, bit for bit; the masked half is re-sampled.
    assert torch.equal(actual[..., :2], clean[..., :2])
    assert not torch.equal(actual[..., 2:], clean[..., 2:])
    unmasked = run_pack_sampler(host, pack_models, latent={"samples": clean}, denoise=denoise)
    assert not torch.equal(actual[..., 2:], unmasked[..., 2:])  # the kept half steers the masked one
    latent_mask = torch.zeros((1, 128, HEIGHT // 16, WIDTH // 16))
    latent_mask[..., 2:] = 1.0
    assert torch.equal(actual, core_inpaint_latent(core_models, clean, comfy_latent_to_tokens(latent_mask), denoise))


def test_pack_sampler_resizes_the_mask_like_native_samplers(host, pack_models):
    """A mask at the latent grid and the same mask at image resolution give the same result (ComfyUI's bilinear
    resize to the latent grid), and native SetLatentNoiseMask's LATENT is taken as it is."""
    clean, mask = half_mask_latent()
    set_mask = comfy_inprocess.native_node("nodes", "SetLatentNoiseMask")
    (masked,) = comfy_inprocess.run_node(set_mask, samples={"samples": clean}, mask=mask)
    from_image = run_pack_sampler(host, pack_models, latent=masked, denoise=0.5)
    grid_mask = mask[:, ::16, ::16]
    from_grid = run_pack_sampler(host, pack_models, latent={"samples": clean, "noise_mask": grid_mask}, denoise=0.5)
    assert torch.equal(from_image, from_grid)


@pytest.mark.parametrize("denoise", [1.0, 0.5])
def test_native_path_inpaints_only_the_masked_region(host, pack_models, denoise):
    clean, mask = half_mask_latent()
    native = run_native_path(host, pack_models, {"samples": clean, "noise_mask": mask}, denoise=denoise)
    assert torch.equal(native[..., :2], clean[..., :2])
    assert not torch.equal(native[..., 2:], clean[..., 2:])
    unmasked = run_native_path(host, pack_models, {"samples": clean}, denoise=denoise)
    assert not torch.equal(native[..., 2:], unmasked[..., 2:])
    pack = run_pack_sampler(host, pack_models, latent={"samples": clean, "noise_mask": mask}, denoise=denoise)
    # Same maths up to float rounding, except at the first step of a full denoise, where ComfyUI's inpainting
    # noises the kept region with the model sampling's noise_scaling (the pure noise, as the official start)
    # and the pack loop with t_min * input + (1 - t_min) * noise (1e-4 of the input apart).
    assert torch.allclose(native, pack, rtol=0, atol=1e-5 if denoise < 1 else 2e-4), (native - pack).abs().max()
