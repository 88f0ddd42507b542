"""Bad inputs on a real ComfyUI server come back as readable node errors, and the server keeps serving.

Each case is the text-to-image workflow with one thing wrong. A case passes when the prompt is refused (HTTP 400
with ``node_errors``) or fails while running (``execution_error`` in /history) with a message that names the
problem; the last test checks that a good prompt still runs afterwards.

Wrong file types are real files in the wrong model folder, as users misplace them: the VAE in
``diffusion_models``, the DiT in ``text_encoders``, the text encoder in ``vae``, plus a file that is not
safetensors at all.
"""

import pytest

from host_session import copy_into, node_error_message, run_ok, serve, the_node, workflow_prompt

pytestmark = pytest.mark.host

WORKFLOW = "ideogram4_text_to_image.json"
NOT_SAFETENSORS = "ideogram4_broken.safetensors"


def _misplace_files(models_dir, paths):
    copy_into(models_dir, paths["vae"], "diffusion_models")
    copy_into(models_dir, paths["dit"], "text_encoders")
    copy_into(models_dir, paths["text_encoder"], "vae")
    (models_dir / "diffusion_models" / NOT_SAFETENSORS).write_bytes(b"<html>404 Not Found</html>\n" * 10)


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


def test_server_still_serves_after_the_errors(server, prompt):
    assert server.alive
    assert "system" in server.client.system_stats()
    _, images = run_ok(server, prompt)
    assert len(images) == 1
