"""The pack's code never imports its core by the absolute name ``ideogram4``.

Inside ComfyUI the pack is a package named after its folder; an absolute ``import ideogram4`` would pick up
whatever top-level ``ideogram4`` comes first on ``sys.path`` (the official pip package has that name), so the core
is imported relatively everywhere (``from .x`` inside the core, ``from ..ideogram4.x`` from the nodes).
"""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACK_SOURCES = sorted([REPO_ROOT / "__init__.py", *(REPO_ROOT / "ideogram4").glob("*.py"),
                       *(REPO_ROOT / "nodes").glob("*.py")])


def absolute_core_imports(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name == "ideogram4" or a.name.startswith("ideogram4.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module == "ideogram4" or node.module.startswith("ideogram4."):
                found.append(f"line {node.lineno}: from {node.module} import ...")
    return found


@pytest.mark.parametrize("path", PACK_SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_pack_module_imports_the_core_relatively(path):
    assert absolute_core_imports(path) == []


def test_the_check_sees_an_absolute_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from ideogram4.sampler import sample\nfrom .sampler import sample as relative\n")
    assert absolute_core_imports(sample) == ["line 1: from ideogram4.sampler import ..."]
