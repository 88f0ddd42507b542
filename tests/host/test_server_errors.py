"""Bad inputs on a real ComfyUI server come back as readable node errors, and the server keeps serving.

Each case is an example workflow with one thing wrong. A case passes when the prompt is refused (HTTP 400
with ``node_errors``) or fails while running (``execution_error`` in /history) with a message that names the
node, the input or file and what to do; input-only rules must answer at queue time (HTTP 400). Inputs that are
odd but usable run and carry a note on the node. The last test checks that a good prompt still runs afterwards.

Wrong file types are real files in the wrong model folder, as users misplace them: the VAE in
``diffusion_models``, the DiT in ``text_encoders``, the text encoder in ``vae``, plus a file that is not
safetensors at all, a truncated download, a pickle (which must never be unpickled) and a DiT of another depth.
"""

import math
import pickle

import pytest

from host_session import copy_into, node_error_message, run_ok, serve, the_node, workflow_prompt
from tools.comfy_server import PromptRejected

pytestmark = pytest.mark.host

WORKFLOW = "ideogram4_text_to_image.json"
NOT_SAFETENSORS = "ideogram4_broken.safetensors"
TRUNCATED = "ideogram4_fp8_scaled_partial.safetensors"
TRUNCATED_TEXT_ENCODER = "qwen3vl_8b_partial.safetensors"
PICKLE = "ideogram4_old.ckpt"
ONE_LAYER_UNCOND = "ideogram4_unconditional_one_layer.safetensors"
PICKLE_MARKER = "unpickled.marker"


class _MarksWhenUnpickled:
    """Unpickling this object creates a file: proof that a loader ran pickle code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _misplace_files(models_dir, paths):
    from safetensors.torch import load_file, save_file

    copy_into(models_dir, paths["vae"], "diffusion_models")
    copy_into(models_dir, paths["dit"], "text_encoders")
    copy_into(models_dir, paths["text_encoder"], "vae")
    (models_dir / "diffusion_models" / NOT_SAFETENSORS).write_bytes(b"<html>404 Not Found</html>\n" * 10)
    data = paths["dit"].read_bytes()
    (models_dir / "diffusion_models" / TRUNCATED).write_bytes(data[: len(data) * 2 // 3])
    data = paths["text_encoder"].read_bytes()
    (models_dir / "text_encoders" / TRUNCATED_TEXT_ENCODER).write_bytes(data[: len(data) // 2])
    (models_dir / "diffusion_models" / PICKLE).write_bytes(
        pickle.dumps({"state_dict": _MarksWhenUnpickled(models_dir / PICKLE_MARKER)}))
    one_layer = {key: value for key, value in load_file(str(paths["uncond_dit"])).items() if ".layers.1." not in
                 f".{key}"}
    save_file(one_layer, str(models_dir / "diffusion_models" / ONE_LAYER_UNCOND))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "errors", prepare_models=_misplace_files)


@pytest.fixture
def prompt(server):
    return workflow_prompt(server, WORKFLOW)


def test_missing_model_file_is_a_node_error(server, prompt):
    the_node(prompt, "Ideogram4RefDiTLoader")["inputs"]["cond_model_name"] = "ideogram4_not_downloaded.safetensors"
    message = node_error_message(server, prompt)
    assert "ideogram4_not_downloaded.safetensors" in message
    assert "Ideogram4RefDiTLoader" in message


@pytest.mark.parametrize("loader, field, file_name, says", [
    ("Ideogram4RefDiTLoader", "cond_model_name", "flux2-vae.safetensors", "VAE"),
    ("Ideogram4RefDiTLoader", "uncond_model_name", NOT_SAFETENSORS, "not a readable safetensors"),
    ("Ideogram4RefTextEncoderLoader", "text_encoder_name", "ideogram4_fp8_scaled.safetensors", "DiT"),
    ("Ideogram4RefVAELoader", "vae_name", "qwen3vl_8b_fp8_scaled.safetensors", "text encoder"),
])
def test_wrong_file_type_in_a_loader_is_a_readable_node_error(server, prompt, loader, field, file_name, says):
    the_node(prompt, loader)["inputs"][field] = file_name
    message = node_error_message(server, prompt)
    assert loader in message, message
    assert file_name in message, message
    assert says.lower() in message.lower(), message


@pytest.mark.parametrize("width", [72, 1000])
def test_width_not_a_multiple_of_16_is_a_node_error(server, prompt, width):
    the_node(prompt, "Ideogram4RefSampler")["inputs"]["width"] = width
    message = node_error_message(server, prompt)
    assert "Ideogram4RefSampler" in message
    assert "width" in message and "16" in message, message


@pytest.mark.parametrize("schedule", ["7x18,banana", "7x5,3x2", "7,,3"])
def test_malformed_guidance_schedule_is_a_node_error(server, prompt, schedule):
    the_node(prompt, "Ideogram4RefSampler")["inputs"].update(preset="Custom", steps=20, guidance_schedule=schedule)
    message = node_error_message(server, prompt)
    assert "Ideogram4RefSampler" in message
    assert "guidance schedule" in message.lower() and schedule in message, message


# --- the bad-input matrix: (node, input changes, what the message must say) ------------------------------------
# Each message must name the input (or file) and say what to do; all of these are input-only or file problems.

LONG_PROMPT = "a red wall " * 1200  # > 2048 tokens after the chat template

MATRIX = [
    # files
    ("Ideogram4RefDiTLoader", {"cond_model_name": TRUNCATED}, [TRUNCATED, "truncated", "Re-download"]),
    ("Ideogram4RefDiTLoader", {"cond_model_name": PICKLE}, [PICKLE, "pickle", ".safetensors"]),
    ("Ideogram4RefDiTLoader", {"uncond_model_name": ONE_LAYER_UNCOND}, [ONE_LAYER_UNCOND, "do not match",
                                                                         "matching pair"]),
    ("Ideogram4RefDiTLoader", {"uncond_model_name": "ideogram4_fp8_scaled.safetensors"},
     ["cond_model_name and uncond_model_name are the same file", "pick the unconditional transformer"]),
    ("Ideogram4RefDiTLoader", {"cond_model_name": "ideogram4_missing.safetensors"},
     ["cond_model_name 'ideogram4_missing.safetensors' is not in models/diffusion_models", "put the file there"]),
    ("Ideogram4RefTextEncoderLoader", {"text_encoder_name": TRUNCATED_TEXT_ENCODER},
     [TRUNCATED_TEXT_ENCODER, "truncated", "Re-download"]),
    # sizes: refused at queue time, before anything is loaded or allocated
    ("Ideogram4RefSampler", {"width": 250}, ["width must be a positive multiple of 16", "use 256"]),
    ("Ideogram4RefSampler", {"height": 16384}, ["height is 16384 px, above the limit of 4096 px", "use at most 4096"]),
    ("Ideogram4RefSampler", {"width": 0}, ["width must be a positive multiple of 16", "use 16"]),
    ("Ideogram4RefTextEncode", {"official_width": 250, "official_height": 256},
     ["official_width must be a positive multiple of 16 pixels (or 0)", "use 256"]),
    # schedule
    ("Ideogram4RefSampler", {"preset": "Custom", "steps": 0}, ["steps is 0, outside 1 .. 500"]),
    ("Ideogram4RefSampler", {"preset": "Custom", "mu": math.nan}, ["mu is nan, which is not a finite number",
                                                                    "set a value from -10.0 to 10.0"]),
    ("Ideogram4RefSampler", {"preset": "Custom", "std": math.inf}, ["std is inf, which is not a finite number"]),
    ("Ideogram4RefSampler", {"preset": "Custom", "steps": 4, "guidance_schedule": "7x3,-3"},
     ["guidance_schedule", "is negative", "Expected one of"]),
    ("Ideogram4RefSampler", {"preset": "Custom", "steps": 4, "guidance_schedule": ""},
     ["guidance_schedule", "it is empty", "Expected one of"]),
    # prompts
    ("Ideogram4RefTextEncode", {"prompt": ""}, ["the prompt is empty", "write a JSON caption or plain text"]),
    ("Ideogram4RefTextEncode", {"prompt": "bad \ud800 text"}, ["lone surrogate", "position 4",
                                                               "retype or paste that part again"]),
    ("Ideogram4RefTextEncode", {"prompt": "a red\x00wall"}, ["NUL character (U+0000) at position 5", "remove it"]),
    ("Ideogram4RefTextEncode", {"prompt": LONG_PROMPT}, ["tokens long", "Shorten the prompt by"]),
    # wrong types through the API
    ("Ideogram4RefSampler", {"width": "wide"}, ["width", "INT"]),
    ("Ideogram4RefSampler", {"preset": 7}, ["preset 7 is not one of", "Default 20"]),
    ("Ideogram4RefSampler", {"seed": -1}, ["seed", "smaller than min of 0"]),
    # (0.33 refuses this combo value at queue time; 0.3.64 checks no V3 combo there, so the node refuses it)
    ("Ideogram4RefDiTLoader", {"weight_dtype": "int4"}, ["weight_dtype", "int4", "fp8_fast"]),
]


@pytest.mark.parametrize("node_type, changes, says", MATRIX,
                         ids=[f"{case[0].removeprefix('Ideogram4Ref')}-{'-'.join(case[1])}-{index}"
                              for index, case in enumerate(MATRIX)])
def test_bad_input_matrix(server, prompt, node_type, changes, says):
    the_node(prompt, node_type)["inputs"].update(changes)
    message = node_error_message(server, prompt)
    assert node_type in message, message
    for text in says:
        assert text in message, f"{text!r} not in {message}"


def test_input_only_rules_are_refused_when_queued_with_http_400(server, prompt):
    the_node(prompt, "Ideogram4RefSampler")["inputs"]["width"] = 250
    with pytest.raises(PromptRejected) as info:
        server.client.queue_prompt(prompt)
    assert info.value.status == 400
    assert any(node["class_type"] == "Ideogram4RefSampler" for node in info.value.node_errors.values())


def test_the_pickle_was_never_unpickled(server):
    assert not (server.models_dir / PICKLE_MARKER).exists()


def test_a_linked_size_input_on_native_interop_is_checked_by_each_node(server):
    prompt = workflow_prompt(server, "ideogram4_native_interop.json")
    the_node(prompt, "Ideogram4RefEmptyLatent")["inputs"]["width"] = 100
    the_node(prompt, "Ideogram4RefScheduler")["inputs"]["height"] = 8192
    message = node_error_message(server, prompt)
    assert "Ideogram 4 Empty Latent: width must be a positive multiple of 16" in message, message
    assert "Ideogram 4 Scheduler: height is 8192 px, above the limit of 4096 px" in message, message


def _node_text(entry: dict, prompt: dict, class_type: str) -> str:
    node_id = next(key for key, node in prompt.items() if node["class_type"] == class_type)
    return "\n".join(entry["outputs"].get(node_id, {}).get("text", []))


def test_usable_but_odd_inputs_run_with_a_note_on_the_node(server, prompt):
    """Swapped cond/uncond files, a guidance schedule under a preset, bidi controls in the prompt."""
    the_node(prompt, "Ideogram4RefDiTLoader")["inputs"].update(
        cond_model_name="ideogram4_unconditional_fp8_scaled.safetensors",
        uncond_model_name="ideogram4_fp8_scaled.safetensors")
    the_node(prompt, "Ideogram4RefSampler")["inputs"].update(preset="Turbo 12", guidance_schedule="5x12")
    the_node(prompt, "Ideogram4RefTextEncode")["inputs"]["prompt"] = "price \u202e01$"
    entry, images = run_ok(server, prompt)
    assert len(images) == 1
    loader = _node_text(entry, prompt, "Ideogram4RefDiTLoader")
    assert "cond_model_name ideogram4_unconditional_fp8_scaled.safetensors looks like the unconditional" in loader
    assert "uncond_model_name ideogram4_fp8_scaled.safetensors does not look like the unconditional" in loader
    sampler = _node_text(entry, prompt, "Ideogram4RefSampler")
    assert "guidance_schedule '5x12' is ignored: preset 'Turbo 12' uses its own schedule" in sampler
    caption = _node_text(entry, prompt, "Ideogram4RefTextEncode")
    assert "invisible bidirectional control character(s) (U+202E at 6)" in caption
    log = server.log_tail(200_000)
    assert "Ideogram 4 DiT Loader: cond_model_name ideogram4_unconditional_fp8_scaled.safetensors looks like" in log
    assert "Ideogram 4 Sampler: guidance_schedule '5x12' is ignored" in log


def test_server_still_serves_after_the_errors(server, prompt):
    assert server.alive
    assert "system" in server.client.system_stats()
    _, images = run_ok(server, prompt)
    assert len(images) == 1
