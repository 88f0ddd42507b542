"""Sampler loop against a hand-written official loop, noise stream, callback contract and img2img start."""

import math

import pytest
import torch

from ideogram4.presets import V4_DEFAULT_20
from ideogram4.sampler import InpaintRegion, img2img_start, make_noise, sample
from ideogram4.schedule import logit_normal_schedule


def cond_velocity(z, t):
    """Toy 'conditional model': nonlinear in z and t, fp32 in, fp32 out."""
    return torch.tanh(z * (1.0 + t)) - 0.37 * t * z


def uncond_velocity(z, t):
    return torch.sin(z) * (1.0 - t) + 0.11


def official_loop(z, steps, mu, std, width, height, guidance_loop_index_order):
    """The official Ideogram4Pipeline.__call__ update (spec §D.3), written out: loop index i = steps-1 .. 0,
    times from the float32 u grid warped in float64, guidance indexed in loop-index order."""
    mean = mu + 0.5 * math.log(height * width / (512 * 512))
    t_min, t_max = 1.0 / (1 + math.exp(0.5 * 18.0)), 1.0 / (1 + math.exp(0.5 * -15.0))

    def schedule(u):
        warped = 1 - torch.special.expit(mean + std * torch.special.ndtri(u.to(torch.float64)))
        return warped.clamp(t_min, t_max).to(torch.float32)

    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)
    gw_per_step = torch.as_tensor(guidance_loop_index_order, dtype=torch.float32)
    for i in range(steps - 1, -1, -1):
        t_val = float(schedule(u[i + 1].unsqueeze(0)).item())
        s_val = float(schedule(u[i].unsqueeze(0)).item())
        pos_v = cond_velocity(z, t_val)
        neg_v = uncond_velocity(z, t_val)
        gw_i = gw_per_step[i]
        v = gw_i * pos_v + (1.0 - gw_i) * neg_v
        z = z + v * (s_val - t_val)
    return z


# Sampling order, first step first. 4.3 and 0.6 are values where 1 - g in fp32 differs from 1 - g in Python double.
@pytest.mark.parametrize("guidance", [[7.0, 3.0], [4.3, 0.6]])
def test_two_step_run_equals_official_loop_bit_for_bit(guidance):
    noise = make_noise(2, 5, seed=42, device="cpu")
    times = logit_normal_schedule(2, 0.0, 1.75, 1024, 768)

    result = sample(cond_velocity, uncond_velocity, times, guidance, noise)
    expected = official_loop(noise.clone(), 2, 0.0, 1.75, 1024, 768, list(reversed(guidance)))

    assert result.dtype == torch.float32 and result.shape == noise.shape
    assert torch.equal(result, expected)
    # Guard that the comparison can fail: applying the guidance in the official list order is a different result.
    assert not torch.equal(result, sample(cond_velocity, uncond_velocity, times, guidance[::-1], noise))


def test_preset_run_equals_official_loop_with_official_guidance_order():
    preset = V4_DEFAULT_20
    noise = make_noise(1, 3, seed=7, device="cpu", channels=8)
    times = logit_normal_schedule(preset.steps, preset.mu, preset.std, 512, 512)
    result = sample(cond_velocity, uncond_velocity, times, preset.guidance, noise)
    # The official loop reads its guidance list by loop index (i = steps-1 .. 0): ours reversed.
    expected = official_loop(noise, preset.steps, preset.mu, preset.std, 512, 512, tuple(reversed(preset.guidance)))
    assert torch.equal(result, expected)


def test_velocities_receive_python_float_times_in_sampling_order():
    seen = []

    def recording(z, t):
        seen.append(t)
        return torch.zeros_like(z)

    times = logit_normal_schedule(3, 0.0, 1.75, 1024, 1024)
    sample(recording, recording, times, [7.0, 7.0, 3.0], make_noise(1, 2, 0, "cpu"))
    assert seen == [times[0], times[0], times[1], times[1], times[2], times[2]]
    assert all(type(t) is float for t in seen)


def test_same_seed_reproduces_and_different_seeds_differ():
    times = logit_normal_schedule(2, 0.0, 1.75, 1024, 1024)

    def run(seed):
        return sample(cond_velocity, uncond_velocity, times, [7.0, 3.0], make_noise(1, 4, seed, "cpu"))

    assert torch.equal(run(123), run(123))
    assert not torch.allclose(run(123), run(124))


def test_noise_is_one_seeded_randn_call_in_token_layout():
    noise = make_noise(2, 6, seed=2024, device="cpu")
    expected = torch.randn((2, 6, 128), dtype=torch.float32, generator=torch.Generator(device="cpu").manual_seed(2024))
    assert noise.shape == (2, 6, 128) and noise.dtype == torch.float32
    assert torch.equal(noise, expected)
    # One call for the whole batch: the second sample continues the stream, it is not a re-seeded copy.
    assert not torch.equal(noise[0], noise[1])
    assert torch.equal(make_noise(1, 6, seed=2024, device="cpu")[0], noise[0])


@pytest.mark.parametrize("kwargs", [dict(batch=0), dict(num_tokens=-1), dict(channels=0), dict(seed=1.5)])
def test_noise_rejects_bad_arguments(kwargs):
    args = dict(batch=1, num_tokens=4, seed=0, device="cpu") | kwargs
    with pytest.raises(ValueError, match="make_noise"):
        make_noise(**args)


def test_callback_runs_once_per_step_with_the_latent_after_that_step():
    times = logit_normal_schedule(3, 0.0, 1.75, 1024, 1024)
    guidance = [7.0, 7.0, 3.0]
    noise = make_noise(1, 4, 5, "cpu")
    calls = []
    result = sample(cond_velocity, uncond_velocity, times, guidance, noise,
                    callback=lambda step, latent: calls.append((step, latent.clone())))

    assert [step for step, _ in calls] == [0, 1, 2]
    assert torch.equal(calls[0][1], sample(cond_velocity, uncond_velocity, times[:2], guidance[:1], noise))
    assert torch.equal(calls[-1][1], result)


def test_exception_from_callback_stops_sampling():
    velocity_calls = []

    def counting(z, t):
        velocity_calls.append(t)
        return cond_velocity(z, t)

    def interrupt(step, latent):
        if step == 1:
            raise KeyboardInterrupt("interrupted by user")

    times = logit_normal_schedule(4, 0.0, 1.75, 1024, 1024)
    with pytest.raises(KeyboardInterrupt, match="interrupted by user"):
        sample(counting, counting, times, [7.0] * 4, make_noise(1, 2, 0, "cpu"), callback=interrupt)
    assert len(velocity_calls) == 4  # steps 0 and 1 ran (cond + uncond each), steps 2 and 3 never did


def test_input_latent_is_not_modified():
    noise = make_noise(1, 4, 9, "cpu")
    before = noise.clone()
    sample(cond_velocity, uncond_velocity, logit_normal_schedule(2, 0.0, 1.75, 256, 256), [7.0, 3.0], noise)
    assert torch.equal(noise, before)


@pytest.mark.parametrize(
    "times, guidance, latent, velocity, fragment",
    [
        ([0.1, 0.5], [7.0, 3.0], None, None, "guidance has 2 entries but times describe 1 steps"),
        ([0.5, 0.1], [7.0], None, None, "times must be ascending model times"),
        ([0.5], [], None, None, "at least 2 entries"),
        ([0.1, 0.5], [7.0], torch.zeros(1, 2, 4, dtype=torch.bfloat16), None, "must be a \\(B, N, C\\) float32"),
        ([0.1, 0.5], [7.0], None, lambda z, t: z.to(torch.bfloat16), "must return a float32 tensor"),
        ([0.1, 0.5], [7.0], None, lambda z, t: z[:, :1], "must return a float32 tensor"),
    ],
)
def test_sample_rejects_inconsistent_inputs(times, guidance, latent, velocity, fragment):
    latent = torch.zeros(1, 2, 4) if latent is None else latent
    velocity = velocity or cond_velocity
    with pytest.raises(ValueError, match=fragment):
        sample(velocity, velocity, times, guidance, latent)


def test_img2img_full_denoise_keeps_everything_and_starts_from_pure_noise():
    times = logit_normal_schedule(20, 0.0, 1.75, 1024, 1024)
    noise = make_noise(1, 4, 3, "cpu")
    clean = torch.full_like(noise, 2.0)
    times_tail, guidance_tail, start = img2img_start(times, V4_DEFAULT_20.guidance, 1.0, clean, noise)
    assert times_tail == times and guidance_tail == list(V4_DEFAULT_20.guidance)
    assert torch.equal(start, noise)  # official txt2img start, not t_min * x0 + (1 - t_min) * noise


@pytest.mark.parametrize("steps, denoise, kept", [(20, 0.5, 10), (12, 0.3, 4), (20, 0.05, 1), (12, 0.625, 8)])
def test_img2img_partial_denoise_keeps_last_steps_and_mixes_at_first_kept_time(steps, denoise, kept):
    times = logit_normal_schedule(steps, 0.0, 1.75, 1024, 1024)
    guidance = [7.0] * (steps - 2) + [3.0, 3.0]
    noise = make_noise(2, 4, 3, "cpu")
    clean = torch.linspace(-1, 1, noise.numel()).reshape(noise.shape)

    times_tail, guidance_tail, start = img2img_start(times, guidance, denoise, clean, noise)

    assert times_tail == times[steps - kept:] and len(times_tail) == kept + 1
    assert guidance_tail == guidance[steps - kept:]
    t = times_tail[0]
    expected = t * clean.double() + (1.0 - t) * noise.double()
    assert start.dtype == torch.float32
    assert torch.allclose(start.double(), expected, atol=1e-6, rtol=0)


def test_img2img_start_lies_on_the_flow_path_so_exact_velocity_reaches_its_end():
    """With the exact flow velocity v = x0 - noise, Euler is exact: a partial run starting on the path
    t*x0 + (1-t)*noise lands on t_max*x0 + (1-t_max)*noise. The full run starts from pure noise (official), i.e.
    t_min*(x0 - noise) off the path, and lands that far short."""
    times = logit_normal_schedule(12, 0.5, 1.75, 1024, 1024)
    noise = make_noise(1, 4, 11, "cpu")
    clean = torch.linspace(-2, 2, noise.numel()).reshape(noise.shape)
    exact = lambda z, t: clean - noise  # noqa: E731
    on_path_end = times[-1] * clean.double() + (1.0 - times[-1]) * noise.double()
    official_full_end = noise.double() + (times[-1] - times[0]) * (clean.double() - noise.double())

    for denoise, expected in ((0.4, on_path_end), (1.0, official_full_end)):
        times_tail, guidance_tail, start = img2img_start(times, [7.0] * 12, denoise, clean, noise)
        result = sample(exact, exact, times_tail, guidance_tail, start)
        assert torch.allclose(result.double(), expected, atol=1e-5, rtol=0)  # fp32 rounding over 12 steps
    assert not torch.allclose(on_path_end, official_full_end, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "denoise, clean_shape, fragment",
    [
        (0.0, (1, 4, 128), "denoise must be in \\(0, 1\\]"),
        (1.5, (1, 4, 128), "denoise must be in \\(0, 1\\]"),
        (float("nan"), (1, 4, 128), "denoise must be in \\(0, 1\\]"),
        (0.02, (1, 4, 128), "keeps 0 of 20 steps; use denoise >= 0.05"),
        (0.5, (1, 5, 128), "does not match noise shape"),
    ],
)
def test_img2img_rejects_bad_denoise_and_shapes(denoise, clean_shape, fragment):
    times = logit_normal_schedule(20, 0.0, 1.75, 1024, 1024)
    noise = make_noise(1, 4, 3, "cpu")
    with pytest.raises(ValueError, match=fragment):
        img2img_start(times, [7.0] * 20, denoise, torch.zeros(clean_shape), noise)


def _inpaint_case(seed=5):
    times = logit_normal_schedule(6, 0.0, 1.75, 1024, 1024)
    noise = make_noise(2, 6, seed, "cpu")
    clean = torch.linspace(-2, 2, noise.numel()).reshape(noise.shape)
    mask = torch.zeros((1, 6, 1))
    mask[:, 3:] = 1.0  # the last three tokens re-sampled, the first three kept
    return times, [7.0] * 5 + [3.0], noise, clean, mask


def test_inpaint_keeps_the_unmasked_tokens_bit_for_bit_and_resamples_the_masked_ones():
    times, guidance, noise, clean, mask = _inpaint_case()
    seen = []

    def mixing(z, t):  # like attention, every token sees the others
        return cond_velocity(z, t) + z.mean(dim=1, keepdim=True)

    def recording(z, t):
        seen.append((t, z.clone()))
        return mixing(z, t)

    result = sample(recording, uncond_velocity, times, guidance, noise, inpaint=InpaintRegion(mask, clean, noise))
    assert torch.equal(result[:, :3], clean[:, :3])
    plain = sample(mixing, uncond_velocity, times, guidance, noise)
    assert not torch.equal(result[:, 3:], plain[:, 3:])  # the kept tokens reach the masked ones via the model
    # Hand-computed oracle: at each step the model sees the kept tokens on the noised input's path.
    for t, z in seen:
        expected = t * clean[:, :3].double() + (1.0 - t) * noise[:, :3].double()
        assert torch.allclose(z[:, :3].double(), expected, atol=1e-6, rtol=0)


def test_inpaint_with_a_mask_of_ones_is_the_plain_loop_bit_for_bit():
    times, guidance, noise, clean, _ = _inpaint_case()
    ones = torch.ones((1, 6, 1))
    result = sample(cond_velocity, uncond_velocity, times, guidance, noise, inpaint=InpaintRegion(ones, clean, noise))
    assert torch.equal(result, sample(cond_velocity, uncond_velocity, times, guidance, noise))


def test_inpaint_kept_tokens_follow_the_flow_path_exactly_with_the_exact_velocity():
    """Where the mask is 0 the velocity is the path's own clean - noise, so Euler stays on t*clean + (1-t)*noise
    between steps (previews of the kept area show the input)."""
    times, guidance, noise, clean, mask = _inpaint_case()
    latents = []
    sample(cond_velocity, uncond_velocity, times, guidance, noise, callback=lambda step, z: latents.append(z),
           inpaint=InpaintRegion(mask, clean, noise))
    for step, z in enumerate(latents):
        s = times[step + 1]
        expected = s * clean[:, :3].double() + (1.0 - s) * noise[:, :3].double()
        assert torch.allclose(z[:, :3].double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field, value, fragment", [
    ("mask", torch.ones((1, 5, 1)), "inpaint.mask must be"),
    ("mask", torch.ones((1, 6, 1), dtype=torch.float64), "inpaint.mask must be"),
    ("clean", torch.zeros((2, 6, 7)), "inpaint.clean must be"),
    ("noise", torch.zeros((2, 6, 128), dtype=torch.bfloat16), "inpaint.noise must be"),
])
def test_inpaint_rejects_inconsistent_tensors(field, value, fragment):
    times, guidance, noise, clean, mask = _inpaint_case()
    parts = {"mask": mask, "clean": clean, "noise": noise, field: value}
    with pytest.raises(ValueError, match=fragment):
        sample(cond_velocity, uncond_velocity, times, guidance, noise, inpaint=InpaintRegion(**parts))
