"""The example workflow files and the UI -> API converter, checked without a ComfyUI host.

The host tests (test_server_*.py) check the same files against a live server; these catch a stale or
hand-edited file and converter mistakes on every run, host or not.
"""

import json

import pytest

from host_session import WORKFLOWS_DIR, load_workflow
from tools.workflow_api import WorkflowError, to_api_prompt, validate_workflow, widget_slots

from tools import build_workflows
from ideogram4.caption import validate_caption

DOWNLOAD_HINTS = {
    "ideogram4_fp8_scaled.safetensors":
        ("https://huggingface.co/Comfy-Org/Ideogram-4/resolve/main/diffusion_models/ideogram4_fp8_scaled.safetensors",
         "diffusion_models"),
    "ideogram4_unconditional_fp8_scaled.safetensors":
        ("https://huggingface.co/Comfy-Org/Ideogram-4/resolve/main/diffusion_models/"
         "ideogram4_unconditional_fp8_scaled.safetensors", "diffusion_models"),
    "qwen3vl_8b_fp8_scaled.safetensors":
        ("https://huggingface.co/Comfy-Org/Qwen3-VL/resolve/main/text_encoders/qwen3vl_8b_fp8_scaled.safetensors",
         "text_encoders"),
    "flux2-vae.safetensors":
        ("https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/vae/flux2-vae.safetensors", "vae"),
}
PRESET_OF_FILE = {
    "ideogram4_inpaint.json": ("Default 20", 20, 1024),
    "ideogram4_text_to_image.json": ("Default 20", 20, 1024),
    "ideogram4_quality.json": ("Quality 48", 48, 2048),
    "ideogram4_turbo.json": ("Turbo 12", 12, 1024),
    "ideogram4_native_interop.json": ("Default 20", 20, 1024),
    "ideogram4_enhance_prompt.json": ("Default 20", 20, 1024),
    "ideogram4_lora.json": ("Default 20", 20, 1024),
}
ENHANCE_WORKFLOW = "ideogram4_enhance_prompt.json"
# Workflows whose Text Encode prompt is written in the file (the enhance workflow's comes from the enhancer).
CAPTION_WORKFLOWS = sorted(set(PRESET_OF_FILE) - {ENHANCE_WORKFLOW})


def _object_info_from_build_schemas() -> dict:
    """An /object_info stand-in built from the generator's schemas (the live one is checked by the host tests)."""
    info = {}
    for node_type, (inputs, outputs) in build_workflows.SCHEMAS.items():
        optional = build_workflows.OPTIONAL_INPUTS.get(node_type, set())
        uploads = build_workflows.UPLOAD_INPUTS.get(node_type, set())
        groups = {"required": {}, "optional": {}}
        for name, kind, _ in inputs:
            options = {"control_after_generate": True} if name == "seed" else {}
            if name in uploads:
                options["image_upload"] = True
            groups["optional" if name in optional else "required"][name] = [kind, options]
        info[node_type] = {"input": groups, "input_order": {group: list(groups[group]) for group in groups},
                           "output": [t for _, t in outputs], "output_name": [n for n, _ in outputs]}
    return info


def test_workflow_files_are_what_the_generator_writes():
    for name, workflow in build_workflows.all_workflows().items():
        on_disk = (WORKFLOWS_DIR / name).read_text(encoding="utf-8")
        assert on_disk == build_workflows.render(workflow), f"{name} is stale: run python -m tools.build_workflows"


@pytest.mark.parametrize("name", sorted(PRESET_OF_FILE))
def test_workflow_is_a_consistent_ui_graph(name):
    workflow = load_workflow(name)
    assert validate_workflow(workflow, _object_info_from_build_schemas()) == []
    types = [node["type"] for node in workflow["nodes"]]
    assert types.count("Note") == 1 and "SaveImage" in types
    note = next(node for node in workflow["nodes"] if node["type"] == "Note")
    assert len(note["widgets_values"][0]) > 200  # an explanation, not a title


@pytest.mark.parametrize("name", sorted(PRESET_OF_FILE))
def test_workflow_carries_download_hints_for_every_model_file(name):
    workflow = load_workflow(name)
    seen = {}
    for node in workflow["nodes"]:
        for hint in node.get("properties", {}).get("models", []):
            seen[hint["name"]] = (hint["url"], hint["directory"])
            assert hint["name"] in node["widgets_values"], f"hint {hint['name']} not selected on node {node['type']}"
    assert seen == DOWNLOAD_HINTS
    assert {m["name"] for m in workflow["models"]} == set(DOWNLOAD_HINTS)


@pytest.mark.parametrize("name", sorted(PRESET_OF_FILE))
def test_workflow_uses_its_preset_and_size(name):
    preset, steps, size = PRESET_OF_FILE[name]
    prompt = to_api_prompt(load_workflow(name), _object_info_from_build_schemas())
    for node in prompt.values():
        inputs = node["inputs"]
        if "preset" in inputs:
            assert (inputs["preset"], inputs["steps"]) == (preset, steps), node
        if "width" in inputs:
            assert (inputs["width"], inputs["height"]) == (size, size), node


@pytest.mark.parametrize("name", CAPTION_WORKFLOWS)
def test_workflow_prompt_is_a_clean_json_caption(name):
    prompt = to_api_prompt(load_workflow(name), _object_info_from_build_schemas())
    (encode,) = [node for node in prompt.values() if node["class_type"] == "Ideogram4RefTextEncode"]
    report = validate_caption(encode["inputs"]["prompt"])
    assert (report.kind, report.problems, report.warnings) == ("json", [], [])
    assert json.dumps(report.caption, separators=(",", ":"), ensure_ascii=False) == encode["inputs"]["prompt"]


def test_enhance_workflow_feeds_the_enhancer_caption_into_text_encode():
    prompt = to_api_prompt(load_workflow(ENHANCE_WORKFLOW), _object_info_from_build_schemas())
    (enhancer_id,) = [node_id for node_id, node in prompt.items()
                      if node["class_type"] == "Ideogram4RefPromptEnhancer"]
    enhancer = prompt[enhancer_id]["inputs"]
    (encode,) = [node for node in prompt.values() if node["class_type"] == "Ideogram4RefTextEncode"]
    (loader_id,) = [node_id for node_id, node in prompt.items()
                    if node["class_type"] == "Ideogram4RefTextEncoderLoader"]
    (sampler,) = [node for node in prompt.values() if node["class_type"] == "Ideogram4RefSampler"]
    assert encode["inputs"]["prompt"] == [enhancer_id, 0]
    assert enhancer["text_encoder"] == encode["inputs"]["text_encoder"] == [loader_id, 0]
    assert (enhancer["width"], enhancer["height"]) == (sampler["inputs"]["width"], sampler["inputs"]["height"])
    assert enhancer["lm_head_name"] == build_workflows.LM_HEAD_FILE and enhancer["keep_boxes"] is False
    assert validate_caption(enhancer["idea"]).kind == "plain"  # an idea, not a caption


def test_converter_maps_widgets_by_input_order_and_skips_the_seed_control_entry():
    info = {
        "Source": {"input": {"required": {}}, "output": ["MODEL"]},
        "Sampler": {
            "input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": True}],
                                   "sampler": [["euler", "heun"], {}]},
                      "optional": {"denoise": ["FLOAT", {}], "latent": ["LATENT", {}]}},
            "input_order": {"required": ["model", "seed", "sampler"], "optional": ["denoise", "latent"]},
            "output": ["LATENT"],
        },
    }
    workflow = {
        "last_node_id": 3, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 0, 2, 0, "MODEL"]],
        "nodes": [
            {"id": 1, "type": "Source", "inputs": [], "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}],
             "widgets_values": []},
            {"id": 2, "type": "Sampler", "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
             "widgets_values": [123, "randomize", "heun", 0.5]},
            {"id": 3, "type": "Note", "inputs": [], "outputs": [], "widgets_values": ["hello"]},
        ],
    }
    assert [name for name, _ in widget_slots(info["Sampler"])] == ["seed", None, "sampler", "denoise"]
    assert to_api_prompt(workflow, info) == {
        "1": {"class_type": "Source", "inputs": {}},
        "2": {"class_type": "Sampler", "inputs": {"seed": 123, "sampler": "heun", "denoise": 0.5, "model": ["1", 0]}},
    }

    broken = json.loads(json.dumps(workflow))
    broken["nodes"][1]["widgets_values"] = [123, "heun", 0.5]  # the control entry forgotten
    broken["links"][0][5] = "LATENT"
    with pytest.raises(WorkflowError) as raised:
        to_api_prompt(broken, info)
    assert "3 widgets_values but the node has 4" in str(raised.value)
    assert "output 0 is MODEL, link says LATENT" in str(raised.value)
