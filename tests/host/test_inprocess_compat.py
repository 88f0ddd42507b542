"""In-process host tests of nodes/compat.py, the one place that detects host features: each detection must agree
with what this host really offers (run on every supported host; see comfy_inprocess.py)."""

from __future__ import annotations

import inspect

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()


@pytest.fixture(scope="module")
def compat(host):
    return host.nodes.compat


def small_module() -> torch.nn.Module:
    import comfy.ops

    module = torch.nn.Module()
    module.linear = comfy.ops.disable_weight_init.Linear(4, 3, dtype=torch.float32)
    return module


def test_new_patcher_is_the_hosts_core_patcher_and_loads(compat):
    import comfy.model_management
    import comfy.model_patcher

    device = comfy.model_management.get_torch_device()
    patcher = compat.new_patcher(small_module(), device, device)
    core = getattr(comfy.model_patcher, "CoreModelPatcher", None)
    assert type(patcher) is (core or comfy.model_patcher.ModelPatcher)
    comfy.model_management.load_models_gpu([patcher])
    assert any(loaded.model is patcher for loaded in comfy.model_management.current_loaded_models)


def test_is_dynamic_answers_what_the_patcher_says(compat):
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    patcher = compat.new_patcher(small_module(), device, device)
    own = getattr(patcher, "is_dynamic", None)
    assert compat.is_dynamic(patcher) is (bool(own()) if callable(own) else False)
    assert compat.is_dynamic(object()) is False  # a patcher without the method (older hosts) is never dynamic


def test_load_weights_copies_into_a_non_dynamic_patcher_and_empties_the_state_dict(compat):
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    module = small_module()
    patcher = compat.new_patcher(module, device, device)
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"linear.weight": weight.clone(), "linear.bias": torch.ones(3)}
    source = state["linear.weight"]
    compat.load_weights(patcher, module, state)
    assert state == {}
    assert torch.equal(module.linear.weight, weight)
    assert module.linear.weight.data_ptr() != source.data_ptr()  # copied, not assigned (not a dynamic patcher)


def test_offloadable_cast_is_detected_as_the_host_offers_it(compat):
    import comfy.ops

    parameters = inspect.signature(comfy.ops.cast_bias_weight).parameters
    assert compat.has_offloadable_cast() == ("offloadable" in parameters)


def test_cli_flag_reads_comfyui_arguments_and_answers_false_for_unknown_ones(compat, monkeypatch):
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, "fp32_unet", True)
    assert compat.cli_flag("fp32_unet") is True
    monkeypatch.setattr(comfy.cli_args.args, "fp32_unet", False)
    assert compat.cli_flag("fp32_unet") is False
    assert compat.cli_flag("no_such_flag_on_any_host") is False


def test_archive_dtypes_records_parameter_dtypes_where_the_host_pages_weights(compat):
    import comfy.model_management

    module = small_module()
    compat.archive_dtypes(module)
    recorded = getattr(module.linear, "weight_comfy_model_dtype", None)
    if hasattr(comfy.model_management, "archive_model_dtypes"):
        assert recorded == torch.float32
    else:
        assert recorded is None


def test_latent_format_is_a_128_channel_16x_format_and_flux2_where_present(compat):
    import comfy.latent_formats

    latent_format = compat.latent_format()
    assert latent_format.latent_channels == 128 and latent_format.spacial_downscale_ratio == 16
    flux2 = getattr(comfy.latent_formats, "Flux2", None)
    assert compat.latent_format_class() is (flux2 or compat.Ideogram4LatentFormat)
    samples = torch.randn(1, 128, 2, 3)
    assert torch.equal(latent_format.process_out(latent_format.process_in(samples)), samples)


def test_inference_dtype_is_the_manual_cast_dtype_or_the_weight_dtype(compat, host, pack_models):
    cond = pack_models[0].model
    assert compat.inference_dtype(cond) == torch.float32  # fp32 weights on the CPU, no manual cast
    previous = cond.manual_cast_dtype
    cond.manual_cast_dtype = torch.bfloat16
    try:
        assert compat.inference_dtype(cond) == torch.bfloat16
    finally:
        cond.manual_cast_dtype = previous



def test_prompt_server_is_the_servers_instance_and_none_without_one(compat, monkeypatch):
    # A stand-in ``server`` module: importing the host's real one in-process needs ComfyUI's main.py set-up.
    import sys
    import types

    class PromptServer:
        pass

    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=PromptServer))
    assert compat.prompt_server() is None  # ComfyUI imported without its server: no instance
    PromptServer.instance = running = object()
    assert compat.prompt_server() is running
    monkeypatch.setitem(sys.modules, "server", None)  # no server module at all (a tool outside ComfyUI)
    assert compat.prompt_server() is None
