"""The pack's Qwen3-VL text encoder against transformers' Qwen3-VL and diffusers' Ideogram4Pipeline.encode_prompt.

A tiny random Qwen3-VL (36 decoder layers so tap 35 exists, hidden 32, 4 query / 2 KV heads, head dim 8, the
real 151936-token vocabulary so real token ids work) in float32. Every parameter, RMSNorm weights included, is
randomised so that swapped or skipped weights show.
"""

import functools
import types

import pytest
import torch

from ideogram4.constants import QWEN3_VL_ACTIVATION_LAYERS
from ideogram4.text_encoder import (
    Qwen3VLTextConfig,
    Qwen3VLTextEncoder,
    encode_prompts,
    image_slot_count,
    official_sequence,
)
from ideogram4.tokens import PAD_TOKEN_ID, load_tokenizer, tokenize_prompt, tokenize_prompts

transformers = pytest.importorskip("transformers")

from tiny_qwen import tapped_hidden_states, tiny_qwen3_vl  # noqa: E402  (needs transformers)

HF_PREFIX = "model.language_model."
TOLERANCE = 1e-5
PROMPTS = {
    "json": '{"summary":"A red fox in snow","style":"photo","text":[]}',
    "plain": "a cat holding a sign that says hello world",
    "short": "hi",
}

# The user-turn part of Qwen3-VL-Instruct's chat template. diffusers renders prompts through the tokenizer's
# own template, and the Qwen2.5 tokenizer files used here carry Qwen2.5's (which adds a default system
# prompt), so the oracle tokenizer gets this one instead.
QWEN3_VL_USER_TURN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def pack_encoder_from(model, dtype=torch.float32) -> Qwen3VLTextEncoder:
    """The pack's encoder holding the same language-model weights (HF prefix stripped)."""
    text_config = Qwen3VLTextConfig.from_hf_config(model.config.to_dict())
    encoder = Qwen3VLTextEncoder(text_config, dtype=dtype)
    state = {key[len(HF_PREFIX):]: value for key, value in model.state_dict().items() if key.startswith(HF_PREFIX)}
    state = {key: value for key, value in state.items() if key in encoder.state_dict()}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def transformers_taps(model, input_ids, attention_mask=None):
    """Outputs of the tapped decoder layers from transformers' own forward: 13 x (B, L, hidden)."""
    # Positions count from each row's first real token, as in the official packing.
    position_ids = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return tapped_hidden_states(model, input_ids, attention_mask, position_ids)


def interleave(taps):
    """Official layout by hand: feature[h*13 + tap] = taps[tap][h]."""
    batch, length, hidden = taps[0].shape
    features = torch.zeros(batch, length, hidden * len(taps))
    for tap_index, tap in enumerate(taps):
        features[..., tap_index :: len(taps)] = tap.float()
    return features


@pytest.fixture(scope="module")
def hf_model():
    return tiny_qwen3_vl()


@pytest.fixture(scope="module")
def encoder(hf_model):
    return pack_encoder_from(hf_model)


@functools.lru_cache(maxsize=None)
def _load_tokenizer_once(directory: str):
    return load_tokenizer(directory)  # ~2 s to build from vocab.json + merges.txt


@pytest.fixture
def tokenizer(qwen_tokenizer_dir):
    return _load_tokenizer_once(str(qwen_tokenizer_dir))


def test_encoder_builds_layers_0_to_35_only(encoder):
    assert len(encoder.layers) == 36 == QWEN3_VL_ACTIVATION_LAYERS[-1] + 1
    names = {name for name, _ in encoder.named_modules()}
    assert "norm" not in names and "lm_head" not in names and not any("visual" in name for name in names)


@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
def test_single_prompt_features_equal_transformers_taps(hf_model, encoder, tokenizer, prompt_name):
    ids = torch.tensor([tokenize_prompt(tokenizer, PROMPTS[prompt_name])])
    expected = interleave(transformers_taps(hf_model, ids))

    features, lengths = encode_prompts(encoder, tokenizer, [PROMPTS[prompt_name]])

    assert lengths == [ids.shape[1]]
    assert features.dtype == torch.float32
    assert features.shape == (1, ids.shape[1], 32 * 13)
    assert (features - expected).abs().max().item() <= TOLERANCE
    # Guard against a vacuous comparison: the taps differ from each other and from zero.
    assert expected.abs().max() > 0.1
    assert (expected[..., 0::13] - expected[..., 12::13]).abs().max() > 0.1


def test_padded_batch_equals_transformers_on_real_rows(hf_model, encoder, tokenizer):
    prompts = [PROMPTS["plain"], PROMPTS["short"]]
    features, lengths = encode_prompts(encoder, tokenizer, prompts)
    longest = max(lengths)
    assert lengths[0] != lengths[1] and features.shape[1] == longest

    ids = torch.full((2, longest), PAD_TOKEN_ID)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        row_ids = tokenize_prompt(tokenizer, prompt)
        ids[row, longest - len(row_ids):] = torch.tensor(row_ids)
        mask[row, longest - len(row_ids):] = 1
    expected = interleave(transformers_taps(hf_model, ids, mask))

    for row, length in enumerate(lengths):
        real = slice(longest - length, longest)
        assert (features[row, real] - expected[row, real]).abs().max().item() <= TOLERANCE
        assert torch.count_nonzero(features[row, : longest - length]) == 0


def test_batch_rows_equal_single_prompt_features(encoder, tokenizer):
    prompts = [PROMPTS["json"], PROMPTS["short"]]
    batch_features, lengths = encode_prompts(encoder, tokenizer, prompts)
    longest = max(lengths)
    for row, prompt in enumerate(prompts):
        single, (length,) = encode_prompts(encoder, tokenizer, [prompt])
        assert length == lengths[row]
        assert (batch_features[row, longest - length:] - single[0]).abs().max().item() <= TOLERANCE
        assert torch.count_nonzero(batch_features[row, : longest - length]) == 0
        assert torch.isfinite(batch_features[row]).all()


def test_features_equal_diffusers_encode_prompt_on_real_rows(hf_model, encoder, tokenizer, qwen_tokenizer_dir):
    """diffusers 0.42.1 ``Ideogram4Pipeline.encode_prompt`` on the same weights and tokens.

    Deviations of the oracle, and how the test handles them: diffusers pads the text region to
    ``max_sequence_length`` (2048 by default; 64 here) and appends zero rows for the image tokens, so only its
    real-text rows are compared; it renders prompts with the tokenizer's chat template, so the oracle tokenizer
    carries Qwen3-VL's user-turn template (the test data's Qwen2.5 template would add a system prompt); its
    ``text_encoder`` is a ``Qwen3VLModel`` (what the official loader's AutoModel builds).
    """
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline

    oracle_tokenizer = transformers.AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    oracle_tokenizer.chat_template = QWEN3_VL_USER_TURN_TEMPLATE
    pipeline_like = types.SimpleNamespace(
        tokenizer=oracle_tokenizer,
        text_encoder=hf_model.model,
        _prepare_ids=Ideogram4Pipeline._prepare_ids,
        _get_text_encoder_hidden_states=Ideogram4Pipeline._get_text_encoder_hidden_states,
    )
    prompts = [PROMPTS["json"], PROMPTS["plain"]]
    max_sequence_length = 64
    with torch.no_grad():
        prompt_embeds, _, _, indicator = Ideogram4Pipeline.encode_prompt(
            pipeline_like, prompts, grid_h=1, grid_w=1, max_sequence_length=max_sequence_length,
            device=torch.device("cpu"),
        )

    features, lengths = encode_prompts(encoder, tokenizer, prompts)
    longest = max(lengths)
    for row, length in enumerate(lengths):
        oracle_rows = prompt_embeds[row, max_sequence_length - length : max_sequence_length]
        assert (indicator[row, max_sequence_length - length : max_sequence_length] == 3).all()
        assert (features[row, longest - length:] - oracle_rows).abs().max().item() <= TOLERANCE


def test_bfloat16_compute_matches_transformers_bfloat16(tokenizer):
    """In bf16 (the official dtype) the pack computes what transformers computes, to the bit on this CPU, for a
    single prompt and for a left-padded batch. Bit equality also pins what float32 tolerances cannot see:
    positions counted from each row's first real token (RoPE is shift-invariant in exact arithmetic, not in
    bf16) and transformers' RMSNorm rounding."""
    # Parameters in bf16 but RoPE's inv_freq buffer left in float32, as the official loader leaves it
    # (AutoModel.from_config in float32, then bf16 tensors assigned).
    bf16_model = tiny_qwen3_vl()
    for parameter in bf16_model.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    encoder = pack_encoder_from(bf16_model, dtype=torch.bfloat16)

    ids = torch.tensor([tokenize_prompt(tokenizer, PROMPTS["plain"])])
    features, _ = encode_prompts(encoder, tokenizer, [PROMPTS["plain"]])
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, interleave(transformers_taps(bf16_model, ids)), rtol=0, atol=0)

    prompts = [PROMPTS["json"], PROMPTS["short"]]
    batch = tokenize_prompts(tokenizer, prompts)
    expected = interleave(transformers_taps(bf16_model, batch.input_ids, batch.attention_mask.long()))
    features, lengths = encode_prompts(encoder, tokenizer, prompts)
    longest = max(lengths)
    for row, length in enumerate(lengths):
        torch.testing.assert_close(features[row, longest - length:], expected[row, longest - length:], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Official sequence mode: the text encoded together with the image's token slots
# ----------------------------------------------------------------------------------------------------------------

OFFICIAL_WIDTH, OFFICIAL_HEIGHT = 96, 64  # 6 x 4 = 24 image slots


def official_layout_by_hand(token_lists, image_slots):
    """The official packed sequence of Qwen3-VL inputs, built from the official layout: per row
    ``[left pad][text][image_slots slots]``, every pad and slot token id 0 and position 0, text positions
    0..n-1, attention mask 1 on the real text only. Returns ids, mask, positions, each (B, L + image_slots)."""
    longest = max(len(ids) for ids in token_lists)
    total = longest + image_slots
    ids = torch.zeros((len(token_lists), total), dtype=torch.long)
    mask = torch.zeros((len(token_lists), total), dtype=torch.long)
    positions = torch.zeros((len(token_lists), total), dtype=torch.long)
    for row, row_ids in enumerate(token_lists):
        start = longest - len(row_ids)
        ids[row, start:longest] = torch.tensor(row_ids)
        mask[row, start:longest] = 1
        positions[row, start:longest] = torch.arange(len(row_ids))
    return ids, mask, positions


def official_packed_oracle(model, token_lists, image_slots):
    """transformers' Qwen3-VL on :func:`official_layout_by_hand`'s sequence. Returns the interleaved features
    of the text region, (B, L, hidden*13) with L the longest prompt (slots dropped; pad rows as transformers
    made them)."""
    longest = max(len(ids) for ids in token_lists)
    ids, mask, positions = official_layout_by_hand(token_lists, image_slots)
    return interleave([tap[:, :longest] for tap in tapped_hidden_states(model, ids, mask, positions)])


@pytest.fixture(scope="module")
def bf16_model_and_encoder():
    """The tiny model with bf16 parameters (RoPE's inv_freq left float32, as the official loader leaves it)."""
    model = tiny_qwen3_vl()
    for parameter in model.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    return model, pack_encoder_from(model, dtype=torch.bfloat16)


def test_official_sequence_matches_the_official_layout(tokenizer):
    """Token ids, positions and mask of pads and slots exactly as the official packing writes them. (Text rows
    never attend to the trailing slots, and on this CPU the longer key row leaves their bf16 bits unchanged, so
    the parity test below cannot see a wrong id, position or mask in a slot; this pins them.)"""
    token_lists = [tokenize_prompt(tokenizer, PROMPTS["json"]), tokenize_prompt(tokenizer, PROMPTS["short"])]
    batch = tokenize_prompts(tokenizer, [PROMPTS["json"], PROMPTS["short"]])
    expected_ids, expected_mask, expected_positions = official_layout_by_hand(token_lists, 24)

    ids, mask, positions = official_sequence(batch.input_ids, batch.attention_mask, 24)

    assert torch.equal(ids, expected_ids)
    assert torch.equal(mask, expected_mask.bool())
    assert torch.equal(positions, expected_positions)
    # A single unpadded prompt (no mask given): the slots still come masked, at position 0.
    ids, mask, positions = official_sequence(batch.input_ids[:1], None, 24)
    expected_ids, expected_mask, expected_positions = official_layout_by_hand(token_lists[:1], 24)
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask.bool())
    assert torch.equal(positions, expected_positions)


def test_image_slot_count_is_the_image_token_grid():
    assert image_slot_count(OFFICIAL_WIDTH, OFFICIAL_HEIGHT) == 24
    assert image_slot_count(1024, 768) == 64 * 48
    assert image_slot_count(0, 1024) == 0
    with pytest.raises(ValueError, match="width=1000"):
        image_slot_count(1000, 1024)


@pytest.mark.parametrize("prompt_names", [("plain",), ("json", "short")], ids=["single", "padded_batch"])
def test_bfloat16_official_sequence_is_bit_identical_to_transformers_on_the_packed_sequence(
    bf16_model_and_encoder, tokenizer, prompt_names
):
    """The official pipeline encodes the text together with the image's token slots (``[pad][text][slots]``,
    only the text attended to). The masked keys do not change the maths, but in bf16 they change the last bits
    of the text features, so bit parity with the official features needs the same packed sequence:
    ``image_slots`` rebuilds it. The oracle is transformers' Qwen3-VL run on that sequence built by hand.
    (The slots trail the text, so causality alone hides them from every text row; their only effect is the
    longer, masked key row the attention kernel reduces over. On this CPU's SDPA kernel that leaves the bf16
    text rows bit-unchanged, on GPU kernels it does not. Here the test pins the text rows returned (slots sliced
    off, pads zeroed); the layout test above pins the slots' ids, positions and mask.)"""
    model, encoder = bf16_model_and_encoder
    prompts = [PROMPTS[name] for name in prompt_names]
    token_lists = [tokenize_prompt(tokenizer, prompt) for prompt in prompts]
    slots = image_slot_count(OFFICIAL_WIDTH, OFFICIAL_HEIGHT)
    expected = official_packed_oracle(model, token_lists, slots)

    features, lengths = encode_prompts(encoder, tokenizer, prompts, image_slots=slots)

    longest = max(lengths)
    assert features.shape == (len(prompts), longest, 32 * 13)
    for row, length in enumerate(lengths):
        assert torch.equal(features[row, longest - length:], expected[row, longest - length:])
        assert torch.count_nonzero(features[row, : longest - length]) == 0
    assert expected.abs().max() > 0.1


def test_bfloat16_without_image_slots_is_bit_identical_to_transformers_on_the_text_alone(
    bf16_model_and_encoder, tokenizer
):
    """image_slots=0 (the default) still encodes the text alone, bit for bit as transformers does."""
    model, encoder = bf16_model_and_encoder
    prompts = [PROMPTS["json"], PROMPTS["short"]]
    batch = tokenize_prompts(tokenizer, prompts)
    expected = interleave(transformers_taps(model, batch.input_ids, batch.attention_mask.long()))

    features, lengths = encode_prompts(encoder, tokenizer, prompts, image_slots=0)

    longest = max(lengths)
    for row, length in enumerate(lengths):
        assert torch.equal(features[row, longest - length:], expected[row, longest - length:])
