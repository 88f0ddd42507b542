"""Facts the README states that live in code: they are checked against their one source, so they cannot drift."""

import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def module_constant(path: pathlib.Path, name: str):
    """A module-level literal of a file that cannot be imported here (nodes/ imports comfy)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned at module level in {path}")


def test_readme_states_the_minimum_comfyui_version_of_nodes_compat():
    minimum = module_constant(REPO_ROOT / "nodes" / "compat.py", "MIN_COMFYUI_VERSION")
    assert f"Works on ComfyUI **{minimum} " in README


def test_ci_installs_the_minimum_comfyui_version():
    # .ci/run derives the archive name from the constant; the archive must be one that install-comfyui.sh gets.
    minimum = module_constant(REPO_ROOT / "nodes" / "compat.py", "MIN_COMFYUI_VERSION")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "MIN_COMFYUI_VERSION" in ci and 'comfyui-$oldest.tar.gz' in ci
    shared_archive = REPO_ROOT.parent / "shared" / "host" / f"comfyui-{minimum}.tar.gz"
    assert shared_archive.is_file() or not shared_archive.parent.is_dir(), f"no {shared_archive.name} beside the others"


def _runs(guidance) -> str:
    """``45×7 then 3×3``: each run of equal guidance as COUNT×VALUE, first step first."""
    runs: list[list] = []
    for value in guidance:
        if runs and runs[-1][1] == value:
            runs[-1][0] += 1
        else:
            runs.append([1, value])
    return " then ".join(f"{count}×{value:g}" for count, value in runs)


def test_readme_presets_are_those_of_ideogram4_presets():
    from ideogram4.presets import PRESETS

    paragraph = next(text for text in README.split("\n\n") if text.startswith("**Presets**"))
    presets_line = " ".join(paragraph.split())  # the README wraps lines anywhere
    for preset in PRESETS.values():
        phrase = f"{preset.label} = {preset.steps} steps, mu {preset.mu:g}, std {preset.std:g}, {_runs(preset.guidance)}"
        assert phrase in presets_line, f"README's preset line lacks {phrase!r}"
    assert presets_line.count(" steps, mu ") == len(PRESETS), "README lists a preset that presets.py does not"
    labels = " / ".join(preset.label for preset in PRESETS.values())
    assert f"`preset` ({labels} / Custom)" in README
