"""Schedule times against the spec's printed values (§D.5) and an independent re-evaluation of the official formula."""

import math
import statistics

import numpy as np
import pytest

from ideogram4.schedule import T_MAX, T_MIN, logit_normal_schedule

# Spec §D.5: float32 times as the official LogitNormalSchedule returns them, first step first, 9 significant digits
# (enough to identify a float32 exactly).
SPEC_TIMES = {
    ("V4_DEFAULT_20", 1024): (20, 0.0, 1.75, """
        0.00012339458 0.0273411423 0.0504089743 0.075375475 0.102846958 0.133136779 0.166470915 0.203030869
        0.242962673 0.286375195 0.333333343 0.38384968 0.437875241 0.495291054 0.555903673 0.61944896 0.685613275
        0.754102051 0.824851334 0.8989259 0.999447227"""),
    ("V4_TURBO_12", 1024): (12, 0.5, 1.75, """
        0.00012339458 0.0262525938 0.0528432429 0.085215576 0.124889612 0.173446313 0.232696533 0.304725021
        0.391890049 0.496802509 0.622421861 0.77330929 0.999447227"""),
    ("V4_QUALITY_48", 2048): (48, 0.0, 1.5, """
        0.00012339458 0.0116406148 0.0182747599 0.0244236812 0.0304488279 0.0364902839 0.04262238 0.0488924943
        0.0553349033 0.0619768202 0.0688415989 0.0759503916 0.0833231211 0.0909792557 0.098938264 0.107219845
        0.115844399 0.124833055 0.134208053 0.143992901 0.15421246 0.164893374 0.176064134 0.187755316 0.200000003
        0.212834001 0.226296231 0.240429118 0.255279154 0.270897478 0.287340611 0.304671258 0.322959661 0.34228459
        0.36273548 0.384414494 0.407439679 0.431949079 0.458106518 0.486109942 0.516203821 0.548698664 0.584003389
        0.622682095 0.66556567 0.713999033 0.770511627 0.841436684 0.999447227"""),
}


def official_formula_times(steps, mu, std, width, height):
    """The official schedule re-derived with math/numpy only (spec §D.2), in sampling order."""
    mean = mu + 0.5 * math.log(width * height / (512 * 512))
    t_min = 1 / (1 + math.exp(9.0))
    t_max = 1 / (1 + math.exp(-7.5))
    times = []
    for u in np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)[::-1]:
        u = float(u)
        if u <= 0.0:
            warped = t_max  # ndtri(0) = -inf -> 1 - expit(-inf) = 1, clamped
        elif u >= 1.0:
            warped = t_min
        else:
            y = mean + std * statistics.NormalDist().inv_cdf(u)
            warped = min(max(1.0 - 1.0 / (1.0 + math.exp(-y)), t_min), t_max)
        times.append(float(np.float32(warped)))
    return times


@pytest.mark.parametrize("key", list(SPEC_TIMES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_times_equal_spec_values(key):
    steps, mu, std, spec_text = SPEC_TIMES[key]
    size = key[1]
    spec = [float(v) for v in spec_text.split()]
    times = logit_normal_schedule(steps, mu, std, size, size)

    assert len(times) == steps + 1
    assert max(abs(a - b) for a, b in zip(times, spec)) <= 1e-6
    # 9 significant digits pin down a float32: the official float32-u / float64-warp rounding is reproduced
    # exactly (a float64 u, as diffusers uses, changes 5-17 of these values by one float32 ulp).
    assert times == [float(np.float32(v)) for v in spec]


@pytest.mark.parametrize(
    "steps, mu, std, width, height",
    [(20, 0.0, 1.75, 1024, 1024), (12, 0.5, 1.75, 1024, 1024), (48, 0.0, 1.5, 2048, 2048),
     (7, 0.5, 1.0, 1536, 1024), (1, 0.0, 1.75, 256, 256), (30, -0.3, 0.8, 1600, 400)],
)
def test_times_match_independent_official_formula(steps, mu, std, width, height):
    times = logit_normal_schedule(steps, mu, std, width, height)
    expected = official_formula_times(steps, mu, std, width, height)
    assert len(times) == steps + 1
    assert max(abs(a - b) for a, b in zip(times, expected)) <= 1e-6
    assert all(isinstance(t, float) and t == float(np.float32(t)) for t in times)  # float32 values


def test_endpoints_are_the_logsnr_clamps_and_order_is_ascending():
    assert T_MIN == pytest.approx(1.2339458e-4, rel=1e-7)
    assert T_MAX == pytest.approx(0.99944722, rel=1e-8)
    times = logit_normal_schedule(20, 0.0, 1.75, 1024, 1024)
    assert times[0] == float(np.float32(T_MIN))
    assert times[-1] == float(np.float32(T_MAX)) != 1.0  # no forced final step to clean data
    assert all(a < b for a, b in zip(times, times[1:]))


def test_resolution_shift_depends_on_pixel_count_only():
    assert logit_normal_schedule(10, 0.0, 1.75, 2048, 512) == logit_normal_schedule(10, 0.0, 1.75, 1024, 1024)
    # A larger image shifts the mean up, i.e. spends more steps at low t (high noise).
    assert logit_normal_schedule(10, 0.0, 1.75, 2048, 2048)[5] < logit_normal_schedule(10, 0.0, 1.75, 1024, 1024)[5]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(steps=2.0), "steps must be an integer >= 1"),
        (dict(std=0.0), "std must be a finite number > 0"),
        (dict(std=-1.0), "std must be a finite number > 0"),
        (dict(std=float("nan")), "std must be a finite number > 0"),
        (dict(mu=float("inf")), "mu must be a finite number"),
        (dict(width=1000), "width must be a positive multiple of 16"),
        (dict(height=0), "height must be a positive multiple of 16"),
        (dict(height=-16), "height must be a positive multiple of 16"),
    ],
)
def test_invalid_inputs_raise_clear_errors(kwargs, fragment):
    args = dict(steps=20, mu=0.0, std=1.75, width=1024, height=1024) | kwargs
    with pytest.raises(ValueError, match=fragment):
        logit_normal_schedule(**args)
