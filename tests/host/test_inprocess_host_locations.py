"""In-process host tests of what the pack takes from the running ComfyUI (run in the host's Python; see
comfy_inprocess.py): its bundled Qwen tokenizer, found from the imported ``comfy`` package, and its version
against the pack's minimum."""

from __future__ import annotations

import logging
import pathlib

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()


def test_the_hosts_tokenizer_is_found_from_its_imported_comfy_package(host):
    import comfy

    from ideogram4.tokens import PAD_TOKEN_ID, load_tokenizer

    found = host.nodes.compat.host_qwen_tokenizer_dir()

    comfy_package = pathlib.Path(comfy.__path__[0]).resolve()
    assert found is not None and found.resolve().parent.parent == comfy_package
    tokenizer = load_tokenizer(found)  # refuses a tokenizer whose special ids are not Qwen's
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == PAD_TOKEN_ID


def test_the_host_is_at_least_the_minimum_version_and_an_older_one_is_warned_about(host, monkeypatch, caplog):
    compat = host.nodes.compat
    version = compat.comfyui_version()
    assert version is not None, "every supported ComfyUI has comfyui_version.py"
    assert compat._version_tuple(version) >= compat._version_tuple(compat.MIN_COMFYUI_VERSION)
    with caplog.at_level(logging.WARNING):
        assert compat.warn_if_older_than_supported() is False
        assert not caplog.records

        monkeypatch.setattr(compat, "comfyui_version", lambda: "0.3.50")
        assert compat.warn_if_older_than_supported() is True
    assert f"supports {compat.MIN_COMFYUI_VERSION} and newer" in caplog.text and "0.3.50" in caplog.text


def test_versions_compare_as_numbers_not_text(host):
    version_tuple = host.nodes.compat._version_tuple
    assert version_tuple("0.3.9") < version_tuple("0.3.64") < version_tuple("0.4.0") < version_tuple("0.33.0")
