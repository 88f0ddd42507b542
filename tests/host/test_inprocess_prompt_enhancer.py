"""In-process host tests of Ideogram 4 Prompt Enhancer (run in the host's Python; see comfy_inprocess.py).

Tiny random Qwen3-VL files with and without an LM head: the node's caption (the core enhancer run on the same
weights outside ComfyUI is the oracle) feeds Text Encode and the Sampler; the head comes from the text-encoder
file or a separate head file, and with neither the error names the files that carry one; every token reports
progress and a Cancel stops the generation at the next token.
"""

from __future__ import annotations

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

WITH_HEAD_FILE = "qwen3vl_tiny_with_head.safetensors"
WITH_NORM_FILE = "qwen3vl_tiny_with_norm.safetensors"
HEAD_FILE = "qwen3vl_tiny_lm_head.safetensors"
IDEA = "a bakery sign at sunrise"
BUDGET = 40


def _head_tensors() -> dict:
    generator = torch.Generator().manual_seed(5)
    hidden, vocab = tiny.TEXT_CONFIG.hidden_size, tiny.TEXT_CONFIG.vocab_size
    return {"model.language_model.norm.weight": 1.0 + 0.1 * torch.randn(hidden, generator=generator),
            "lm_head.weight": torch.randn(vocab, hidden, generator=generator)}


@pytest.fixture(scope="module")
def add_model_files():
    def add(models_dir):
        te = {f"model.language_model.{k}": v for k, v in tiny.text_encoder_state_dict().items()}
        head = _head_tensors()
        folder = models_dir / "text_encoders"
        save_file({**te, **head}, str(folder / WITH_HEAD_FILE))
        save_file({**te, "model.language_model.norm.weight": head["model.language_model.norm.weight"]},
                  str(folder / WITH_NORM_FILE))
        save_file({"lm_head.weight": head["lm_head.weight"]}, str(folder / HEAD_FILE))
    return add


def _encoder(host, name):
    (encoder,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncoderLoader, text_encoder_name=name)
    return encoder


def _enhance(host, encoder, **overrides):
    inputs = dict(text_encoder=encoder, idea=IDEA, width=1024, height=768, seed=3, temperature=1.0,
                  max_new_tokens=BUDGET)
    inputs.update(overrides)
    (caption,) = comfy_inprocess.run_node(host.nodes.prompt_enhancer.PromptEnhancer, **inputs)
    return caption


def test_caption_equals_the_core_enhancer_and_runs_into_text_encode_and_sampler(host, models, pack_models):
    from ideogram4.caption import validate_caption
    from ideogram4.constrained_decoding import CaptionTokenGrammar, TokenVocabulary
    from ideogram4.prompt_enhancer import enhance_prompt
    from ideogram4.text_encoder_checkpoint import load_language_model_head, load_text_encoder

    encoder = _encoder(host, WITH_HEAD_FILE)
    caption = _enhance(host, encoder)
    report = validate_caption(caption)
    assert report.kind == "json" and report.ok, report.summary()

    # Oracle: the core with plain torch modules from the same file.
    path = models / "text_encoders" / WITH_HEAD_FILE
    loaded = load_text_encoder(path, dtype=torch.float32, host_tokenizer_dir=host.nodes.compat.host_qwen_tokenizer_dir())
    head = load_language_model_head(path, dtype=torch.float32)
    grammar = CaptionTokenGrammar(TokenVocabulary.from_tokenizer(loaded.tokenizer, tiny.TEXT_CONFIG.vocab_size))
    expected = enhance_prompt(loaded.encoder, head, loaded.tokenizer, grammar, IDEA, 1024, 768, BUDGET,
                              temperature=1.0, seed=3)
    assert caption == expected

    # The separate head file gives the same head, so the same caption.
    assert _enhance(host, _encoder(host, WITH_NORM_FILE), lm_head_name=HEAD_FILE) == caption

    (conditioning,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                               prompt=caption)
    cond, uncond, _ = pack_models
    (latent,) = comfy_inprocess.run_node(host.nodes.sampler_node.Sampler, cond_model=cond, uncond_model=uncond,
                                         conditioning=conditioning, preset="Custom", steps=2, mu=0.0, std=1.75,
                                         guidance_schedule="7x1,3", seed=1, width=64, height=48, batch_size=1,
                                         denoise=1.0)
    assert latent["samples"].shape[0] == 1 and torch.isfinite(latent["samples"]).all()


def test_without_a_head_the_error_names_the_files_that_carry_one(host, models):
    encoder = _encoder(host, WITH_NORM_FILE)
    with pytest.raises(ValueError) as raised:
        _enhance(host, encoder)
    message = str(raised.value)
    assert message.startswith("Ideogram 4 Prompt Enhancer:") and "lm_head.weight" in message
    assert WITH_HEAD_FILE in message and HEAD_FILE in message and WITH_NORM_FILE not in message.split("carry one")[1]


def test_budget_too_small_and_empty_idea_are_clear_errors(host, models):
    encoder = _encoder(host, WITH_HEAD_FILE)
    with pytest.raises(ValueError, match="Ideogram 4 Prompt Enhancer: max_new_tokens is 5"):
        _enhance(host, encoder, max_new_tokens=5)
    enhancer = host.nodes.prompt_enhancer.PromptEnhancer
    assert "idea is empty" in enhancer.validate_inputs(idea="  ", width=1024, height=1024)
    assert "NUL" in enhancer.validate_inputs(idea="a\x00b", width=1024, height=1024)
    message = enhancer.validate_inputs(idea="x", width=1000, height=1024)
    assert message.startswith("Ideogram 4 Prompt Enhancer: width") and "1000" in message
    assert enhancer.validate_inputs(idea="x", width=1024, height=1024) is True


def test_progress_per_token_and_cancel_stops_generation(host, models, monkeypatch):
    import comfy.model_management

    encoder = _encoder(host, WITH_HEAD_FILE)
    updates = comfy_inprocess.record_progress(monkeypatch)
    _enhance(host, encoder)
    values = [value for value, total in updates]
    assert all(total == BUDGET for _, total in updates)
    assert values == sorted(values) and len(values) > 1 and values[-1] <= BUDGET

    calls = []
    layer0 = encoder.loaded.encoder.layers[0]
    forward = type(layer0).forward

    def counting_forward(module, *args, **kwargs):
        if module is layer0:
            calls.append(1)
        return forward(module, *args, **kwargs)

    monkeypatch.setattr(type(layer0), "forward", counting_forward)
    updates = comfy_inprocess.record_progress(monkeypatch, interrupt=True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _enhance(host, encoder)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(updates) == 1  # the first token reported, then the Cancel took effect
    assert len(calls) == 1  # the prompt's pass gave the first token; no model call after the Cancel
