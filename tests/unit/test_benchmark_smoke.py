"""CPU smoke test of the step benchmark (benchmarks/dit_step.py) with the tiny config: its correctness path must
really compare the implementations (fp32: the pack, diffusers and ComfyUI native agree to rounding), and it must
write the JSON and print the table. No timing is asserted.

The ComfyUI-native comparison runs only where ComfyUI and its dependencies import (run this file with the host's
Python, e.g. ``~/comfy/ComfyUI/.venv/bin/python -m pytest tests/unit/test_benchmark_smoke.py``); elsewhere it is
skipped with the reason.
"""

import importlib.util
import json

import pytest

from benchmarks import dit_step
from benchmarks.native_comfy import DEFAULT_COMFYUI

TINY_ARGS = ["--device", "cpu", "--config", "tiny", "--dtype", "fp32", "--sizes", "32", "48x32", "--text-tokens", "3",
             "--diffusers-text-padding", "5", "--repeats", "1", "--warmup", "0", "--threads", "1"]
FP32_AGREEMENT = 1e-5


def _comfy_importable() -> bool:
    if importlib.util.find_spec("comfy") is not None:
        return True
    has_source = (DEFAULT_COMFYUI / "comfy" / "ldm" / "ideogram4" / "model.py").is_file()
    return has_source and all(importlib.util.find_spec(name) is not None
                              for name in ("comfy_kitchen", "comfy_aimdo", "psutil"))


def test_step_benchmark_checks_pack_against_diffusers_and_writes_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    status = dit_step.main(TINY_ARGS + ["--implementations", "pack,diffusers",
                                        "--pack-variants", "sdpa=math,rmsnorm=manual", "--json", str(out)])
    assert status == 0
    results = json.loads(out.read_text())

    errors = {(row["pair"], row["branch"]): row["relative_error"] for row in results["check"]}
    variants = ("pack+sdpa=math", "pack+rmsnorm=manual")
    assert set(errors) == {(pair, branch) for pair in ("pack vs diffusers", *(f"pack vs {v}" for v in variants))
                           for branch in ("cond", "uncond")}
    assert all(error <= FP32_AGREEMENT for error in errors.values()), errors

    timings = {(row["size"], row["implementation"]): row for row in results["timings"]}
    assert set(timings) == {(size, impl) for size in ("32x32", "48x32") for impl in ("pack", *variants, "diffusers")}
    for row in timings.values():
        assert row["seconds"] > 0 and len(row["seconds_all"]) == 1
        assert row["tflops"] == pytest.approx(row["step_flops"] / row["seconds"] / 1e12)
    table = capsys.readouterr().out
    assert "pack+rmsnorm=manual" in table and "48x32" in table


def test_bf16_check_measures_every_implementation_against_the_float32_reference(tmp_path):
    """In bf16 the check also runs the pack's maths in float32 on the same weights; each implementation's distance
    to it is bf16 rounding (a few 1e-3 at two blocks), and the pairs pass."""
    out = tmp_path / "results.json"
    args = [a if a != "fp32" else "bf16" for a in TINY_ARGS]
    status = dit_step.main(args + ["--implementations", "pack,diffusers", "--check-only", "--json", str(out)])
    rows = json.loads(out.read_text())["check"]
    to_reference = {(row["pair"], row["branch"]): row["relative_error"] for row in rows if row.get("informative")}
    assert set(to_reference) == {(f"{name} vs float32", branch) for name in ("pack", "diffusers")
                                 for branch in ("cond", "uncond")}
    assert all(1e-4 < error < 2e-2 for error in to_reference.values()), to_reference
    assert status == 0


def test_check_fails_when_an_implementation_disagrees(monkeypatch):
    """A wrong sign in one implementation (the classic ComfyUI -v slip) must fail the check."""
    original = dit_step.pack_implementation

    def wrong_sign_variant(name, cond_model, uncond_model, dtype, levers):
        implementation = original(name, cond_model, uncond_model, dtype, levers)
        if name == "pack":
            return implementation
        prepare = implementation.prepare

        def negated(problem):
            cond, uncond = prepare(problem)
            return (lambda: -cond()), uncond

        implementation.prepare = negated
        return implementation

    monkeypatch.setattr(dit_step, "pack_implementation", wrong_sign_variant)
    status = dit_step.main(TINY_ARGS + ["--implementations", "pack", "--pack-variants", "sdpa=math", "--check-only"])
    assert status == 1


@pytest.mark.skipif(not _comfy_importable(), reason=f"ComfyUI native (at {DEFAULT_COMFYUI}) is not importable in "
                    "this Python; run with the ComfyUI host's Python to include it")
def test_pack_agrees_with_comfyui_native(tmp_path):
    out = tmp_path / "results.json"
    status = dit_step.main(TINY_ARGS + ["--implementations", "pack,native", "--check-only", "--json", str(out)])
    results = json.loads(out.read_text())
    assert "native" not in results["skipped"], results["skipped"]
    errors = {row["branch"]: row["relative_error"] for row in results["check"] if row["pair"] == "pack vs native"}
    assert set(errors) == {"cond", "uncond"}
    assert all(error <= FP32_AGREEMENT for error in errors.values()), errors
    assert status == 0


@pytest.mark.skipif(not _comfy_importable(), reason=f"ComfyUI (at {DEFAULT_COMFYUI}) is not importable in this "
                    "Python; run with the ComfyUI host's Python to smoke-test the load benchmark")
def test_load_benchmark_loads_each_weight_dtype_in_a_child_and_reports_memory(tmp_path):
    from benchmarks import load_memory

    models = tmp_path / "models"
    assert load_memory.main(["--make-models", str(models), "--layers", "2", "--tiny"]) == 0
    out = tmp_path / "load.json"
    assert load_memory.main(["--models", str(models), "--implementations", "pack", "pack-text-encoder",
                              "--json", str(out)]) == 0
    rows = {(row["implementation"], row["file_format"], row["weight_dtype"]): row
            for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("pack", "fp8", "default"), ("pack", "fp8", "bf16"), ("pack", "bf16", "default"),
                         ("pack", "bf16", "fp8"), ("pack-text-encoder", "fp8", "-")}
    # The loaders' dtype choices (compute dtype bf16, as on a GPU host) show in the built models' parameters.
    assert "float8_e4m3fn" in rows["pack", "fp8", "default"]["parameter_dtypes"]
    assert rows["pack", "fp8", "bf16"]["parameter_dtypes"] == ["bfloat16"]
    assert rows["pack", "bf16", "default"]["parameter_dtypes"] == ["bfloat16"]
    assert "float8_e4m3fn" in rows["pack", "bf16", "fp8"]["parameter_dtypes"]
    assert "float8_e4m3fn" in rows["pack-text-encoder", "fp8", "-"]["parameter_dtypes"]
    mib = 2 ** -10
    assert all(row["peak_gib"] >= row["held_gib"] - mib and row["seconds"] > 0 for row in rows.values())
    assert all(row["weights_gib"] > 0 for row in rows.values())


def test_fp8_linear_benchmark_times_the_three_weight_paths_and_measures_their_error(tmp_path):
    from benchmarks import fp8_linear

    out = tmp_path / "fp8.json"
    assert fp8_linear.main(["--device", "cpu", "--sizes", "64", "--width-divisor", "64", "--repeats", "1",
                            "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    errors = {}
    for row in results["rows"]:
        errors.setdefault(row["path"], []).append(row["relative_error"])
    assert set(errors) == {"bf16", "fp8 de-quantised", "fp8_fast"}  # a CPU has fp8 matrix multiplies
    assert len(results["rows"]) == 2 * 5 * 3  # cond and uncond, five block Linears, three paths
    # bf16 rounding of the weights, then fp8 weights (3 mantissa bits), then fp8 activations as well.
    assert max(errors["bf16"]) < 1e-2 < min(errors["fp8 de-quantised"])
    assert max(errors["fp8 de-quantised"]) < 5e-2 and max(errors["fp8_fast"]) < 8e-2
    assert sum(errors["fp8_fast"]) > sum(errors["fp8 de-quantised"])
    assert {(row["size"], row["path"]) for row in results["step"]} == {(64, path) for path in fp8_linear.PATHS}


@pytest.mark.skipif(not _comfy_importable(), reason=f"ComfyUI (at {DEFAULT_COMFYUI}) is not importable in this "
                    "Python; run with the ComfyUI host's Python to smoke-test the fp8 step benchmark")
def test_fp8_step_benchmark_loads_the_fp8_pair_through_the_loader_and_compares_fp8_fast(tmp_path):
    from benchmarks import fp8_step

    out = tmp_path / "fp8_step.json"
    assert fp8_step.main(["--device", "cpu", "--make-models", "--tiny", "--layers", "2", "--models-dir",
                          str(tmp_path / "models"), "--sizes", "64", "--repeats", "1", "--warmup", "0",
                          "--implementations", "pack-default", "pack-fp8_fast", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {(row["implementation"], row["size"]) for row in result["timings"]} == {
        ("pack-default", 64), ("pack-fp8_fast", 64)}
    errors = {row["branch"]: row["relative_error"] for row in result["errors"]}
    assert set(errors) == {"cond", "uncond"}
    assert all(0 < error < 0.1 for error in errors.values())  # approximate, not wrong
