"""The example workflows on a real ComfyUI server: they match the host's nodes and run to an image.

One server for the module (tiny stand-in weights in the Comfy-Org file names); every workflow is validated
against the live ``/object_info``, converted to API format, run with small sizes and its PNG fetched via ``/view``.
"""

import io
import json

import pytest
from PIL import Image

from host_session import (
    WORKFLOW_NAMES,
    load_workflow,
    node_error_message,
    run_ok,
    serve,
    the_node,
    workflow_prompt,
)
from tools import build_workflows
from tools.workflow_api import validate_workflow

pytestmark = pytest.mark.host

PACK_NODES = {
    "Ideogram4RefDiTLoader", "Ideogram4RefTextEncoderLoader", "Ideogram4RefTextEncode", "Ideogram4RefSampler",
    "Ideogram4RefScheduler", "Ideogram4RefGuider", "Ideogram4RefNoise", "Ideogram4RefEmptyLatent",
    "Ideogram4RefVAELoader", "Ideogram4RefVAEDecode", "Ideogram4RefCaption", "Ideogram4RefPromptEnhancer",
    "Ideogram4RefLoraLoader",
}
EXPECTED_WORKFLOWS = ["ideogram4_caption_studio.json", "ideogram4_enhance_prompt.json", "ideogram4_inpaint.json",
                      "ideogram4_lora.json", "ideogram4_native_interop.json", "ideogram4_quality.json",
                      "ideogram4_text_to_image.json", "ideogram4_turbo.json"]
# Small sizes keep the tiny models fast; the 2048 preset is run at 128 to keep its aspect of "bigger".
RUN_SIZES = {"ideogram4_quality.json": (128, 128)}
# The random tiny text encoder writes noise until the budget closes the caption: a small budget keeps it quick.
RUN_OVERRIDES = {"ideogram4_enhance_prompt.json": {"max_new_tokens": 40}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for running in serve(tmp_path_factory, "workflows"):
        write_inpaint_image(running.work_dir / "input" / build_workflows.INPAINT_IMAGE)
        yield running


def write_inpaint_image(path, size=(64, 64)):
    """The inpainting example's input: an RGBA picture whose right half is transparent, which Load Image turns
    into a mask of 1 there (what the mask editor saves)."""
    width, height = size
    image = Image.new("RGBA", size)
    image.putdata([(4 * x % 256, 4 * y % 256, 128, 255 if x < width // 2 else 0)
                   for y in range(height) for x in range(width)])
    image.save(path)


@pytest.fixture(scope="module")
def object_info(server):
    return server.client.object_info()


def _decode_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the /view answer is not a PNG"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def test_every_example_workflow_is_tested():
    assert WORKFLOW_NAMES == EXPECTED_WORKFLOWS


def test_pack_nodes_are_registered_with_tooltips(object_info, server):
    missing = PACK_NODES - set(object_info)
    assert not missing, f"pack nodes missing from /object_info: {sorted(missing)}\n{server.log_tail()}"
    for node_id in sorted(PACK_NODES):
        info = object_info[node_id]
        assert info["category"] == "Ideogram 4", node_id
        assert info["display_name"].endswith("(reference)"), info["display_name"]
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_loader_combos_list_the_stand_in_files(object_info):
    loader = object_info["Ideogram4RefDiTLoader"]["input"]["required"]
    combo = loader["cond_model_name"]
    options = combo[0] if isinstance(combo[0], list) else combo[1]["options"]
    assert "ideogram4_fp8_scaled.safetensors" in options
    assert "ideogram4_unconditional_fp8_scaled.safetensors" in options


@pytest.mark.parametrize("name", EXPECTED_WORKFLOWS)
def test_workflow_matches_the_hosts_nodes(name, object_info):
    problems = validate_workflow(load_workflow(name), object_info)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("name", EXPECTED_WORKFLOWS)
def test_workflow_runs_to_an_image(name, server):
    width, height = RUN_SIZES.get(name, (64, 64))
    prompt = workflow_prompt(server, name, width=width, height=height, **RUN_OVERRIDES.get(name, {}))
    entry, images = run_ok(server, prompt)
    assert len(images) == 1, f"expected one saved image, got {len(images)}: {json.dumps(entry.get('outputs'))}"
    image = _decode_png(images[0])
    assert image.size == (width, height)
    low, high = zip(*image.getextrema())
    # Random weights give noise-like pixels; a constant image means NaNs or a dead decoder.
    assert max(h - l for l, h in zip(low, high)) > 0, f"{name} produced a constant image"


def test_native_interop_graph_reproduces_the_one_node_sampler(server):
    """Scheduler + Guider + Noise through SamplerCustomAdvanced(euler) and the native VAEDecode is the same
    maths as the pack's one-node sampler (same preset, seed and size), so the images agree to 8-bit rounding."""
    one_node = workflow_prompt(server, "ideogram4_text_to_image.json")
    interop = workflow_prompt(server, "ideogram4_native_interop.json")
    sampler = the_node(one_node, "Ideogram4RefSampler")["inputs"]
    noise = the_node(interop, "Ideogram4RefNoise")["inputs"]
    assert sampler["seed"] == noise["seed"] and sampler["preset"] == the_node(interop, "Ideogram4RefGuider")["inputs"]["preset"]
    a = _decode_png(run_ok(server, one_node)[1][0])
    b = _decode_png(run_ok(server, interop)[1][0])
    diffs = [abs(x - y) for x, y in zip(a.tobytes(), b.tobytes())]
    assert max(diffs) <= 2, f"largest pixel difference {max(diffs)} (mean {sum(diffs) / len(diffs):.3f})"


def test_different_seeds_give_different_images(server):
    first = workflow_prompt(server, "ideogram4_turbo.json")
    second = workflow_prompt(server, "ideogram4_turbo.json")
    the_node(second, "Ideogram4RefSampler")["inputs"]["seed"] += 1
    a = _decode_png(run_ok(server, first)[1][0])
    b = _decode_png(run_ok(server, second)[1][0])
    assert a.tobytes() != b.tobytes()


def test_caption_route_answers_each_problem_at_its_path(server):
    caption = {"compositional_deconstruction": {"elements": [{"type": "obj", "bbox": [0, 10, 0, 1200], "desc": "x"}]}}
    status, data = server.client._request("POST", "/api/ideogram4_ref/caption/validate", {"caption": caption})
    answer = json.loads(data)
    assert status == 200 and not answer["ok"]
    assert [p["path"] for p in answer["problems"]] == [
        "$.compositional_deconstruction", "$.compositional_deconstruction.elements[0].bbox[3]"]
    caption["compositional_deconstruction"] = {"background": "ciel étoilé", "elements": []}
    status, data = server.client._request("POST", "/api/ideogram4_ref/caption/validate", {"text": json.dumps(caption)})
    answer = json.loads(data)
    assert answer["ok"] and answer["canonical"] == '{"compositional_deconstruction":{"background":"ciel étoilé","elements":[]}}'


def test_options_route_gives_the_preset_values(server):
    options = server.client.get_json("/api/ideogram4_ref/options")
    assert options["presets"]["Quality 48"] == {"steps": 48, "mu": 0.0, "std": 1.5, "guidance_schedule": "7x45,3x3"}
    assert options["custom_preset"] == "Custom"


def test_caption_node_refuses_a_broken_caption_when_queued(server):
    prompt = workflow_prompt(server, "ideogram4_caption_studio.json")
    state = json.loads(the_node(prompt, "Ideogram4RefCaption")["inputs"]["state"])
    del state["caption"]["compositional_deconstruction"]["background"]
    the_node(prompt, "Ideogram4RefCaption")["inputs"]["state"] = json.dumps(state)
    message = node_error_message(server, prompt)
    assert "Ideogram 4 Caption" in message
    assert '$.compositional_deconstruction: missing required key "background"' in message
