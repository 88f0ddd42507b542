"""The pack's ComfyUI entry module (__init__.py at the repository root), checked without a ComfyUI host.

Each case imports it in a fresh interpreter, the way ComfyUI does (as a package from its folder), with a fake
``comfy`` / ``comfy_api`` standing in for hosts of different ages.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

PACK_ROOT = pathlib.Path(__file__).resolve().parents[2]

IMPORT_PACK = textwrap.dedent(f"""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location(
        "pack_under_test", {str(PACK_ROOT / "__init__.py")!r}, submodule_search_locations=[{str(PACK_ROOT)!r}])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pack_under_test"] = module
    spec.loader.exec_module(module)
""")


def run_import(tmp_path: pathlib.Path, fake_packages: list[str], check: str) -> subprocess.CompletedProcess:
    for package in fake_packages:
        folder = tmp_path / package.replace(".", "/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    code = f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n{IMPORT_PACK}\n{check}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_import_is_light_and_defines_only_the_v3_entry_point(tmp_path):
    result = run_import(tmp_path, ["comfy", "comfy_api", "comfy_api.latest"], textwrap.dedent("""
        assert "torch" not in sys.modules, "importing the pack must not import torch"
        assert not hasattr(module, "NODE_CLASS_MAPPINGS"), "V1 mappings would make ComfyUI ignore comfy_entrypoint"
        assert module.WEB_DIRECTORY == "./web"
        assert callable(module.comfy_entrypoint)
        print("ok")
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_comfyui_without_the_v3_api_gets_a_clear_error(tmp_path):
    for fake in (["comfy"], ["comfy", "comfy_api"]):  # no comfy_api at all / comfy_api without latest
        result = run_import(tmp_path / str(len(fake)), fake, "print('imported')")
        assert result.returncode != 0
        assert "need a newer ComfyUI" in result.stderr and "Update ComfyUI" in result.stderr


def test_outside_comfyui_the_package_imports_without_complaint(tmp_path):
    result = run_import(tmp_path, [], "print('ok')")
    assert result.returncode == 0, result.stderr
