"""Fixtures shared by the in-process host tests (tests/host/test_inprocess_*.py; see comfy_inprocess.py).

All module-scoped: each test module gets its own tiny models folder and its own loaded models. Nothing here
imports comfy, torch or the core at import time, because the server tests load this file under the pack's venv.
"""

from __future__ import annotations

import pytest

import comfy_inprocess


@pytest.fixture(scope="module")
def host():
    """The imported host and pack (see :func:`comfy_inprocess.host`), or a skip saying why not."""
    return comfy_inprocess.host()


@pytest.fixture(scope="module")
def add_model_files():
    """Called with the tiny models folder before ComfyUI is told about it; a module overrides this to add files."""
    return lambda models_dir: None


@pytest.fixture(scope="module")
def models(host, tmp_path_factory, add_model_files):
    """A ComfyUI models folder holding the tiny stand-in models (tiny_host_models), registered with the host."""
    import tiny_host_models as tiny

    models_dir = tiny.write_models(tmp_path_factory.mktemp("models"))
    add_model_files(models_dir)
    comfy_inprocess.register_models(models_dir)
    return models_dir


@pytest.fixture(scope="module")
def prompt():
    """The prompt :func:`pack_models` encodes; a module overrides this to condition on another."""
    return "a red wall"


@pytest.fixture(scope="module")
def pack_models(host, models, prompt):
    """(cond patcher, uncond patcher, CONDITIONING) loaded through the pack's loaders and Text Encode node."""
    import tiny_host_models as tiny

    nodes = host.nodes
    cond, uncond = comfy_inprocess.run_node(nodes.dit_loader.DiTLoader, cond_model_name=tiny.COND_FILE,
                                            uncond_model_name=tiny.UNCOND_FILE, weight_dtype="default")
    (encoder,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    (conditioning,) = comfy_inprocess.run_node(nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                               prompt=prompt)
    return cond, uncond, conditioning
