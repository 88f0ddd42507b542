"""Write the example workflows in workflows/ (ComfyUI UI format, version 0.4, as the frontend saves it).

    python -m tools.build_workflows            # rewrite workflows/*.json
    python -m tools.build_workflows --check    # exit 1 if a file differs from what this script writes

One small graph builder keeps the files consistent: the same loaders with the same download hints
(``properties.models``: the Comfy-Org file names users already have), the same layout, a Note for the artist.
The node schemas below mirror the pack's node definitions (nodes/) and the native nodes used; the host tests
check every file against a live server's ``/object_info``, so a drift shows up there.
"""

import argparse
import json
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: the imports below need the pack's folder on the module path
    raise SystemExit(f"run it from the pack's folder as a module: python -m tools.{pathlib.Path(__file__).stem} ...")

from ideogram4.guidance import format_guidance_schedule  # noqa: E402
from ideogram4.presets import PRESETS as OFFICIAL_PRESETS  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"
PACK_ID = "comfyui-ideogram4-reference"  # the registry id in pyproject.toml (cnr_id)
PACK_VERSION = "0.1.0"

DIT_FILE = "ideogram4_fp8_scaled.safetensors"
UNCOND_DIT_FILE = "ideogram4_unconditional_fp8_scaled.safetensors"
TEXT_ENCODER_FILE = "qwen3vl_8b_fp8_scaled.safetensors"
VAE_FILE = "flux2-vae.safetensors"
# The LM head the enhancer needs when the text-encoder file has none (Comfy-Org's has none): the published
# diffusers/qwen3-vl-8b-instruct-lm-head weights, saved under this name.
LM_HEAD_FILE = "qwen3-vl-8b-instruct-lm-head.safetensors"
# A LoRA the user brings (no download hint): the stand-in of the host tests has this name.
LORA_FILE = "ideogram4_lora.safetensors"
MODEL_HINTS = {
    DIT_FILE: ("https://huggingface.co/Comfy-Org/Ideogram-4/resolve/main/diffusion_models/" + DIT_FILE, "diffusion_models"),
    UNCOND_DIT_FILE: ("https://huggingface.co/Comfy-Org/Ideogram-4/resolve/main/diffusion_models/" + UNCOND_DIT_FILE, "diffusion_models"),
    TEXT_ENCODER_FILE: ("https://huggingface.co/Comfy-Org/Qwen3-VL/resolve/main/text_encoders/" + TEXT_ENCODER_FILE, "text_encoders"),
    VAE_FILE: ("https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/vae/" + VAE_FILE, "vae"),
}

# Official presets by the label the nodes show: (steps, mu, std, guidance schedule text in sampling order).
PRESETS = {preset.label: (preset.steps, preset.mu, preset.std, format_guidance_schedule(preset.guidance))
           for preset in OFFICIAL_PRESETS.values()}

# Node schemas: inputs in declaration order as (name, type, is_widget), outputs as (name, type).
# A widget named "seed" carries ComfyUI's extra control_after_generate entry in widgets_values.
SCHEMAS = {
    "Ideogram4RefDiTLoader": (
        [("cond_model_name", "COMBO", True), ("uncond_model_name", "COMBO", True), ("weight_dtype", "COMBO", True),
         ("compile_blocks", "BOOLEAN", True)],
        [("cond_model", "MODEL"), ("uncond_model", "MODEL")],
    ),
    "Ideogram4RefLoraLoader": (
        [("cond_model", "MODEL", False), ("uncond_model", "MODEL", False), ("lora_name", "COMBO", True),
         ("strength_cond", "FLOAT", True), ("strength_uncond", "FLOAT", True)],
        [("cond_model", "MODEL"), ("uncond_model", "MODEL")],
    ),
    "Ideogram4RefTextEncoderLoader": ([("text_encoder_name", "COMBO", True)], [("IDEOGRAM4_TEXT_ENCODER", "IDEOGRAM4_TEXT_ENCODER")]),
    "Ideogram4RefTextEncode": (
        [("text_encoder", "IDEOGRAM4_TEXT_ENCODER", False), ("prompt", "STRING", True),
         ("official_width", "INT", True), ("official_height", "INT", True)],
        [("CONDITIONING", "CONDITIONING")],
    ),
    "Ideogram4RefPromptEnhancer": (
        [("text_encoder", "IDEOGRAM4_TEXT_ENCODER", False), ("idea", "STRING", True), ("width", "INT", True),
         ("height", "INT", True), ("seed", "INT", True), ("temperature", "FLOAT", True),
         ("max_new_tokens", "INT", True), ("lm_head_name", "COMBO", True), ("keep_boxes", "BOOLEAN", True)],
        [("caption", "STRING")],
    ),
    "Ideogram4RefSampler": (
        [("cond_model", "MODEL", False), ("uncond_model", "MODEL", False), ("conditioning", "CONDITIONING", False),
         ("preset", "COMBO", True), ("steps", "INT", True), ("mu", "FLOAT", True), ("std", "FLOAT", True),
         ("guidance_schedule", "STRING", True), ("seed", "INT", True), ("width", "INT", True), ("height", "INT", True),
         ("batch_size", "INT", True), ("latent", "LATENT", False), ("denoise", "FLOAT", True)],
        [("LATENT", "LATENT")],
    ),
    "Ideogram4RefScheduler": (
        [("preset", "COMBO", True), ("steps", "INT", True), ("mu", "FLOAT", True), ("std", "FLOAT", True),
         ("width", "INT", True), ("height", "INT", True), ("denoise", "FLOAT", True)],
        [("SIGMAS", "SIGMAS")],
    ),
    "Ideogram4RefGuider": (
        [("cond_model", "MODEL", False), ("uncond_model", "MODEL", False), ("conditioning", "CONDITIONING", False),
         ("preset", "COMBO", True), ("steps", "INT", True), ("guidance_schedule", "STRING", True)],
        [("GUIDER", "GUIDER")],
    ),
    "Ideogram4RefNoise": ([("seed", "INT", True)], [("NOISE", "NOISE")]),
    "Ideogram4RefEmptyLatent": ([("width", "INT", True), ("height", "INT", True), ("batch_size", "INT", True)], [("LATENT", "LATENT")]),
    "Ideogram4RefVAELoader": ([("vae_name", "COMBO", True)], [("VAE", "VAE")]),
    "Ideogram4RefVAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False), ("tiled", "BOOLEAN", True)], [("IMAGE", "IMAGE")]),
    "Ideogram4RefCaption": ([("state", "STRING", True)], [("caption", "STRING"), ("width", "INT"), ("height", "INT")]),
    "KSamplerSelect": ([("sampler_name", "COMBO", True)], [("SAMPLER", "SAMPLER")]),
    "SamplerCustomAdvanced": (
        [("noise", "NOISE", False), ("guider", "GUIDER", False), ("sampler", "SAMPLER", False),
         ("sigmas", "SIGMAS", False), ("latent_image", "LATENT", False)],
        [("output", "LATENT"), ("denoised_output", "LATENT")],
    ),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")]),
    "VAEEncode": ([("pixels", "IMAGE", False), ("vae", "VAE", False)], [("LATENT", "LATENT")]),
    "LoadImage": ([("image", "COMBO", True)], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SetLatentNoiseMask": ([("samples", "LATENT", False), ("mask", "MASK", False)], [("LATENT", "LATENT")]),
    "SaveImage": ([("images", "IMAGE", False), ("filename_prefix", "STRING", True)], []),
}
# Inputs the nodes declare optional (the frontend orders widgets required first, then optional).
OPTIONAL_INPUTS = {"Ideogram4RefSampler": {"latent", "denoise"},
                   "Ideogram4RefTextEncode": {"official_width", "official_height"},
                   "Ideogram4RefPromptEnhancer": {"lm_head_name", "keep_boxes"}}
# Combo inputs with an upload button (one more widgets_values entry, "image").
UPLOAD_INPUTS = {"LoadImage": {"image"}}
NATIVE_TYPES = {"KSamplerSelect", "SamplerCustomAdvanced", "VAEDecode", "VAEEncode", "LoadImage", "SetLatentNoiseMask",
                "SaveImage"}
INPAINT_IMAGE = "example.png"  # the image a fresh ComfyUI has in its input folder
# The example prompt is a JSON caption, the form Ideogram 4 was trained on, minified as the model saw it.
CAPTION = {
    "high_level_description": "A hand-painted wooden sign reading \"FRESH BREAD\" hangs in the sunlit window of a "
                              "small bakery.",
    "style_description": {
        "aesthetics": "warm, cozy and inviting",
        "lighting": "soft golden morning sunlight from the left",
        "photo": "shallow depth of field, 50mm lens, eye level",
        "medium": "photograph",
        "color_palette": ["#C8893B", "#F3E3C3", "#5A3A22", "#2F4F3A"],
    },
    "compositional_deconstruction": {
        "background": "The inside of a bakery, softly out of focus: wooden shelves with loaves of bread and a glass "
                      "counter.",
        "elements": [
            {"type": "obj", "bbox": [180, 220, 620, 780],
             "desc": "A rectangular hand-painted wooden sign hanging from two short chains, with a worn dark green "
                     "border.",
             "color_palette": ["#5A3A22", "#2F4F3A"]},
            {"type": "text", "bbox": [300, 280, 500, 720], "text": "FRESH BREAD",
             "desc": "Cream-coloured hand-lettered capitals with a slight drop shadow, centred on the sign.",
             "color_palette": ["#F3E3C3"]},
            {"type": "obj", "bbox": [700, 100, 950, 900],
             "desc": "A row of crusty golden loaves on the window sill, catching the light."},
        ],
    },
}
PROMPT = json.dumps(CAPTION, separators=(",", ":"), ensure_ascii=False)


class Graph:
    """Collects nodes and links in the UI format; ``add`` returns the node id, ``link`` wires outputs to inputs."""

    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, pos, size, widgets=None, title=None, models=None):
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
                "order": node_id - 1, "mode": 0, "inputs": [], "outputs": []}
        if node_type == "Note":
            node["properties"] = {}
            node["widgets_values"] = [widgets]
            node["color"], node["bgcolor"] = "#432", "#653"
        else:
            inputs, outputs = SCHEMAS[node_type]
            # The frontend lists socket inputs first, then the widgets (each also usable as an input socket).
            node["inputs"] = [{"localized_name": n, "name": n, "type": t, "link": None} for n, t, w in inputs if not w]
            node["inputs"] += [{"localized_name": n, "name": n, "type": t, "widget": {"name": n}, "link": None}
                               for n, t, w in inputs if w]
            node["outputs"] = [{"localized_name": n, "name": n, "type": t, "links": [], "slot_index": i}
                               for i, (n, t) in enumerate(outputs)]
            native = node_type in NATIVE_TYPES
            node["properties"] = {"Node name for S&R": node_type, "cnr_id": "comfy-core" if native else PACK_ID,
                                  "ver": "0.3.64" if native else PACK_VERSION}
            if models:
                node["properties"]["models"] = [{"name": name, "url": MODEL_HINTS[name][0], "directory": MODEL_HINTS[name][1]}
                                                for name in models]
            node["widgets_values"] = list(widgets or [])
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def link(self, origin_id, origin_name, target_id, target_name):
        origin, target = self.nodes[origin_id - 1], self.nodes[target_id - 1]
        slot = next(i for i, o in enumerate(origin["outputs"]) if o["name"] == origin_name)
        target_slot = next(i for i, s in enumerate(target["inputs"]) if s["name"] == target_name)
        link_id = len(self.links) + 1
        link_type = origin["outputs"][slot]["type"]
        self.links.append([link_id, origin_id, slot, target_id, target_slot, link_type])
        origin["outputs"][slot]["links"].append(link_id)
        target["inputs"][target_slot]["link"] = link_id

    def workflow(self):
        models = []
        for node in self.nodes:
            for hint in node.get("properties", {}).get("models", []):
                if hint not in models:
                    models.append(hint)
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"ds": dict(VIEW), "frontendVersion": "1.28.6"},
            "models": models, "version": 0.4,
        }


# Layout (graph units): columns wide enough for the widgets' longest values, rows with room for the title bars
# (drawn above each node's pos) so no node covers another; the note sits at the top-left, in view when opened.
TITLE_H = 40
ROW_Y = 420
COL_LOADERS, COL_TEXT, COL_SAMPLER, COL_DECODE, COL_SAVE = 40, 660, 1200, 1640, 1980
NOTE_POS, NOTE_SIZE = (40, 40), (1100, 330)
REPORT_ROOM = 110  # a node's report after a run (web/js/ideogram4_caption_report.js: 90 px and a margin)
VIEW = {"scale": 0.7, "offset": [100, 60]}


def _loaders(graph, encode_pos=(COL_TEXT, ROW_Y), encode_size=(480, 360), prompt=None):
    dit = graph.add("Ideogram4RefDiTLoader", (COL_LOADERS, ROW_Y), (580, 190), [DIT_FILE, UNCOND_DIT_FILE, "default", False],
                    models=[DIT_FILE, UNCOND_DIT_FILE])
    # Room below the DiT Loader for the note it shows after a run when its two files do not pair up.
    te_y = ROW_Y + 190 + REPORT_ROOM + TITLE_H + 30
    te = graph.add("Ideogram4RefTextEncoderLoader", (COL_LOADERS, te_y), (580, 90),
                   [TEXT_ENCODER_FILE], models=[TEXT_ENCODER_FILE])
    vae = graph.add("Ideogram4RefVAELoader", (COL_LOADERS, te_y + 90 + TITLE_H + 30), (580, 90),
                    [VAE_FILE], models=[VAE_FILE])
    # Official size 0 x 0: the text encoded alone (same maths as the official pipeline, faster).
    encode = graph.add("Ideogram4RefTextEncode", encode_pos, encode_size, [PROMPT if prompt is None else prompt, 0, 0])
    graph.link(te, "IDEOGRAM4_TEXT_ENCODER", encode, "text_encoder")
    return dit, encode, vae


def _graph_with_loaders(note, **loader_args):
    """A new graph with the artist's Note and the loaders: (graph, DiT loader, Text Encode, VAE loader)."""
    graph = Graph()
    graph.add("Note", NOTE_POS, NOTE_SIZE, note, title="Read me")
    return (graph, *_loaders(graph, **loader_args))


def _wire_models(graph, dit, encode, target):
    """Both transformers and the text features into a sampling node (Sampler or Guider)."""
    graph.link(dit, "cond_model", target, "cond_model")
    graph.link(dit, "uncond_model", target, "uncond_model")
    graph.link(encode, "CONDITIONING", target, "conditioning")


def _loader_note(preset_name):
    steps, _, _, guidance = PRESETS[preset_name]
    return (
        "Ideogram 4 (reference) - text to image\n\n"
        "Put these files in your ComfyUI models folders (the download links are in the workflow, ComfyUI offers them "
        "when a file is missing):\n"
        f"  models/diffusion_models/{DIT_FILE}\n  models/diffusion_models/{UNCOND_DIT_FILE}\n"
        f"  models/text_encoders/{TEXT_ENCODER_FILE}\n  models/vae/{VAE_FILE}\n\n"
        "How it works: the text encoder reads your prompt; the sampler runs two image models each step - one that "
        "sees the prompt and one that sees only the image - and mixes them by the guidance weight; the VAE turns "
        "the result into pixels.\n\n"
        f"Preset '{preset_name}': {steps} steps, guidance schedule {guidance} (7 for most steps, 3 for the final "
        "polish steps). Pick 'Custom' on the sampler to set steps, mu, std and the guidance schedule yourself, "
        "e.g. '7x18,3x2' = 18 steps at 7 then 2 at 3.\n\n"
        "The prompt is a JSON caption, the form the model was trained on: a short description, the style "
        "(lighting, medium, colours as #RRGGBB) and the elements with optional boxes (0-1000) - a \"text\" element "
        "is lettering to render. Plain text works too but gives weaker images. The Text Encode node checks the "
        "caption and shows any problem.\n\n"
        "Width and height must be multiples of 16. No negative prompt is needed."
    )


def _wire_sampler(graph, dit, encode, vae, sampler, decode, save):
    """Models and text into the one-node Sampler, its latent through the pack's VAE Decode into Save Image."""
    _wire_models(graph, dit, encode, sampler)
    graph.link(sampler, "LATENT", decode, "samples")
    graph.link(vae, "VAE", decode, "vae")
    graph.link(decode, "IMAGE", save, "images")


def _sampler_decode_save(graph, models, encode, vae, preset_name, width, height, prefix):
    """The one-node Sampler on ``models``' cond_model / uncond_model outputs, the pack's VAE Decode, Save Image."""
    steps, mu, std, guidance = PRESETS[preset_name]
    sampler = graph.add("Ideogram4RefSampler", (COL_SAMPLER, ROW_Y), (400, 480),
                        [preset_name, steps, mu, std, guidance, 42, "fixed", width, height, 1, 1.0])
    decode = graph.add("Ideogram4RefVAEDecode", (COL_DECODE, ROW_Y), (300, 110), [False])
    save = graph.add("SaveImage", (COL_SAVE, ROW_Y), (520, 600), [prefix])
    _wire_sampler(graph, models, encode, vae, sampler, decode, save)
    return graph.workflow()


def one_node_sampler_workflow(preset_name, width, height, prefix):
    graph, dit, encode, vae = _graph_with_loaders(_loader_note(preset_name))
    return _sampler_decode_save(graph, dit, encode, vae, preset_name, width, height, prefix)


def lora_workflow():
    note = (
        "Ideogram 4 (reference) with a LoRA\n\n"
        f"Put your Ideogram 4 LoRA in models/loras and pick it on the LoRA Loader (this workflow names {LORA_FILE}). "
        "Files from diffusers/PEFT, ai-toolkit, kohya-style trainers, SimpleTuner (LoRA, LyCORIS LoKr/LoHa), DoRA "
        "and full-weight diff files are understood; keys the loader cannot place are listed on the node.\n\n"
        "strength_cond scales the LoRA on the model that sees the prompt (1 = as trained). strength_uncond is 0: "
        "LoRAs are trained on that conditional model only; raise it only when the LoRA's notes say it was trained "
        "for the image-only model too. For several LoRAs, chain LoRA Loaders (cond_model/uncond_model into the "
        "next one). The LoRA works with every weight_dtype, fp8 included: the weights stay fp8 in memory.\n\n"
        "Model files: see the loaders (download links are in the workflow)."
    )
    graph, dit, encode, vae = _graph_with_loaders(note)
    # Below Text Encode (room for its report), between the DiT Loader and the Sampler in the data flow.
    lora = graph.add("Ideogram4RefLoraLoader", (COL_TEXT, ROW_Y + 360 + REPORT_ROOM + TITLE_H + 40), (480, 170),
                     [LORA_FILE, 1.0, 0.0])
    graph.link(dit, "cond_model", lora, "cond_model")
    graph.link(dit, "uncond_model", lora, "uncond_model")
    return _sampler_decode_save(graph, lora, encode, vae, "Default 20", 1024, 1024, "ideogram4/lora")


class _Column:
    """Stacks nodes downwards from (x, y), leaving room for each title bar."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def next(self, size):
        pos = (self.x, self.y)
        self.y += size[1] + TITLE_H + 30
        return pos, size


def native_interop_workflow():
    preset_name, width, height = "Default 20", 1024, 1024
    steps, mu, std, guidance = PRESETS[preset_name]
    note = (
        "Ideogram 4 (reference) with ComfyUI's own sampler nodes\n\n"
        "Same result as the one-node sampler, built from parts so you can swap pieces: the pack's Scheduler gives "
        "the official noise levels (SIGMAS), the pack's Guider mixes the prompt model and the image-only model by "
        "the per-step guidance schedule (GUIDER), the pack's Noise gives the official starting noise for a seed, "
        "and ComfyUI's SamplerCustomAdvanced runs the steps with the 'euler' sampler. ComfyUI's VAE Decode turns "
        "the latent into pixels with the pack's VAE.\n\n"
        "Keep the preset, steps, width and height the same on the Scheduler, the Guider and the Empty Latent. "
        "Model files: see the loaders (download links are in the workflow)."
    )
    graph, dit, encode, vae = _graph_with_loaders(note)
    column = _Column(COL_SAMPLER, ROW_Y)
    guider = graph.add("Ideogram4RefGuider", *column.next((400, 220)), [preset_name, steps, guidance])
    column.y += REPORT_ROOM  # the Guider's note after a run
    scheduler = graph.add("Ideogram4RefScheduler", *column.next((400, 280)), [preset_name, steps, mu, std, width, height, 1.0])
    noise = graph.add("Ideogram4RefNoise", *column.next((400, 110)), [42, "fixed"])
    select = graph.add("KSamplerSelect", *column.next((400, 80)), ["euler"])
    latent = graph.add("Ideogram4RefEmptyLatent", *column.next((400, 140)), [width, height, 1])
    sampler = graph.add("SamplerCustomAdvanced", (COL_DECODE, ROW_Y), (300, 330))
    decode = graph.add("VAEDecode", (COL_DECODE, ROW_Y + 330 + TITLE_H + 40), (300, 80))
    save = graph.add("SaveImage", (COL_SAVE, ROW_Y), (520, 600), ["ideogram4/native_interop"])
    _wire_models(graph, dit, encode, guider)
    graph.link(noise, "NOISE", sampler, "noise")
    graph.link(guider, "GUIDER", sampler, "guider")
    graph.link(select, "SAMPLER", sampler, "sampler")
    graph.link(scheduler, "SIGMAS", sampler, "sigmas")
    graph.link(latent, "LATENT", sampler, "latent_image")
    graph.link(sampler, "output", decode, "samples")
    graph.link(vae, "VAE", decode, "vae")
    graph.link(decode, "IMAGE", save, "images")
    return graph.workflow()


def caption_state(caption, width, height) -> str:
    """The Caption node's state widget value, written as the editor writes it (JSON.stringify: compact)."""
    return json.dumps({"width": width, "height": height, "caption": caption}, separators=(",", ":"), ensure_ascii=False)


def _sampler_below_small_encode(graph, preset_name, width, height, prefix):
    """The one-node Sampler under a small Text Encode at the top of the sampler column (with room for the caption
    report it grows by after a run), the pack's VAE Decode and Save Image: (sampler, decode, save), not wired."""
    steps, mu, std, guidance = PRESETS[preset_name]
    sampler = graph.add("Ideogram4RefSampler", (COL_SAMPLER, ROW_Y + 160 + REPORT_ROOM + TITLE_H + 40), (400, 480),
                        [preset_name, steps, mu, std, guidance, 42, "fixed", width, height, 1, 1.0])
    decode = graph.add("Ideogram4RefVAEDecode", (COL_DECODE, ROW_Y), (300, 110), [False])
    save = graph.add("SaveImage", (COL_SAVE, ROW_Y), (520, 600), [prefix])
    return sampler, decode, save


def caption_studio_workflow():
    preset_name, width, height = "Default 20", 1536, 1024
    note = (
        "Ideogram 4 (reference) - caption studio\n\n"
        "Write the caption in the form of the Caption node instead of typing JSON: a short description, the style "
        "(photo or art style, lighting, medium, colours), the background and an ordered list of elements. Draw each "
        "element's box on the layout frame (drag on empty space; drag a box to move it, a corner to resize it; "
        "Delete removes the selected box, Ctrl+Z undoes). Every edit is checked by the pack and problems appear "
        "next to their field. 'Paste JSON' loads a caption written elsewhere; 'Copy JSON' copies the canonical one.\n\n"
        "The node sends the caption, minified as the model was trained on, to Text Encode, and the frame's width "
        "and height to the Sampler, so the boxes match the image. Model files: see the loaders."
    )
    graph, dit, encode, vae = _graph_with_loaders(note, encode_pos=(COL_SAMPLER, ROW_Y), encode_size=(400, 160),
                                                  prompt="")
    caption = graph.add("Ideogram4RefCaption", (COL_TEXT, ROW_Y), (520, 860), [caption_state(CAPTION, width, height)])
    sampler, decode, save = _sampler_below_small_encode(graph, preset_name, width, height, "ideogram4/caption_studio")
    graph.link(caption, "caption", encode, "prompt")
    graph.link(caption, "width", sampler, "width")
    graph.link(caption, "height", sampler, "height")
    _wire_sampler(graph, dit, encode, vae, sampler, decode, save)
    return graph.workflow()


def enhance_prompt_workflow():
    preset_name, width, height = "Default 20", 1024, 1024
    note = (
        "Ideogram 4 (reference) - from a short idea to a JSON caption to an image, all offline\n\n"
        "Ideogram 4 works best with full JSON captions. The Prompt Enhancer writes one from your idea with the "
        "text encoder the workflow loads anyway (no second copy of the 8B model), plus its language-model head "
        "(about 1.2 GB). Get the head from the Hugging Face repository diffusers/qwen3-vl-8b-instruct-lm-head and "
        f"save its safetensors file as models/text_encoders/{LM_HEAD_FILE}; with a text-encoder file that "
        "already holds a head (Hugging Face Qwen3-VL weights), set lm_head_name to 'none'.\n\n"
        "Decoding is constrained to the caption schema, so the caption always passes the Text Encode check; when "
        "max_new_tokens runs out it is closed properly. Keep width and height equal on the enhancer and the "
        "sampler (the enhancer composes for that aspect ratio). temperature 0 gives the same caption every run; "
        "change the seed for another caption. keep_boxes lets it place elements with boxes.\n\n"
        "The caption appears on the enhancer node; copy it into a Text Encode prompt to keep and edit it. Other "
        "model files: see the loaders (download links are in the workflow)."
    )
    graph, dit, encode, vae = _graph_with_loaders(note, encode_pos=(COL_SAMPLER, ROW_Y), encode_size=(400, 160),
                                                  prompt="")
    te = next(node["id"] for node in graph.nodes if node["type"] == "Ideogram4RefTextEncoderLoader")
    enhancer = graph.add("Ideogram4RefPromptEnhancer", (COL_TEXT, ROW_Y), (480, 420),
                         ["a hand-painted bakery sign at sunrise that says \"FRESH BREAD\"", width, height, 42,
                          "fixed", 0.7, 1024, LM_HEAD_FILE, False])
    sampler, decode, save = _sampler_below_small_encode(graph, preset_name, width, height, "ideogram4/enhanced_prompt")
    graph.link(te, "IDEOGRAM4_TEXT_ENCODER", enhancer, "text_encoder")
    graph.link(enhancer, "caption", encode, "prompt")
    _wire_sampler(graph, dit, encode, vae, sampler, decode, save)
    return graph.workflow()


def inpaint_workflow():
    preset_name = "Default 20"
    steps, mu, std, guidance = PRESETS[preset_name]
    note = (
        "Ideogram 4 (reference) - inpainting\n\n"
        "Re-draws only the masked part of an image. Load your image, right-click Load Image and choose 'Open in "
        "MaskEditor', paint over what should change and save. The VAE encodes the image, Set Latent Noise Mask "
        "attaches the mask, and the sampler re-samples only the painted area: the rest follows the original "
        "image at every step and comes back unchanged in the latent. Describe the whole picture as you want it "
        "in the prompt, the new part included.\n\n"
        "The image size decides the output size (width and height on the sampler are not used when a latent is "
        "connected); sides are cropped to multiples of 16. Denoise 1 re-draws the masked area from noise; lower "
        "values keep more of what was there.\n\n"
        "Model files: see the loaders (download links are in the workflow)."
    )
    graph, dit, encode, vae = _graph_with_loaders(note)
    # Below Text Encode (room for its report), the picture to re-draw; below the Sampler, encode and mask.
    image = graph.add("LoadImage", (COL_TEXT, ROW_Y + 360 + REPORT_ROOM + TITLE_H + 40), (480, 420),
                      [INPAINT_IMAGE, "image"])
    sampler = graph.add("Ideogram4RefSampler", (COL_SAMPLER, ROW_Y), (400, 480),
                        [preset_name, steps, mu, std, guidance, 42, "fixed", 1024, 1024, 1, 1.0])
    column = _Column(COL_SAMPLER, ROW_Y + 480 + REPORT_ROOM + TITLE_H + 40)
    vae_encode = graph.add("VAEEncode", *column.next((400, 80)))
    set_mask = graph.add("SetLatentNoiseMask", *column.next((400, 80)))
    decode = graph.add("Ideogram4RefVAEDecode", (COL_DECODE, ROW_Y), (300, 110), [False])
    save = graph.add("SaveImage", (COL_SAVE, ROW_Y), (520, 600), ["ideogram4/inpaint"])
    graph.link(image, "IMAGE", vae_encode, "pixels")
    graph.link(vae, "VAE", vae_encode, "vae")
    graph.link(vae_encode, "LATENT", set_mask, "samples")
    graph.link(image, "MASK", set_mask, "mask")
    _wire_sampler(graph, dit, encode, vae, sampler, decode, save)
    graph.link(set_mask, "LATENT", sampler, "latent")
    return graph.workflow()


def all_workflows() -> dict[str, dict]:
    """File name -> workflow."""
    return {
        "ideogram4_inpaint.json": inpaint_workflow(),
        "ideogram4_text_to_image.json": one_node_sampler_workflow("Default 20", 1024, 1024, "ideogram4/text_to_image"),
        "ideogram4_quality.json": one_node_sampler_workflow("Quality 48", 2048, 2048, "ideogram4/quality"),
        "ideogram4_turbo.json": one_node_sampler_workflow("Turbo 12", 1024, 1024, "ideogram4/turbo"),
        "ideogram4_native_interop.json": native_interop_workflow(),
        "ideogram4_caption_studio.json": caption_studio_workflow(),
        "ideogram4_enhance_prompt.json": enhance_prompt_workflow(),
        "ideogram4_lora.json": lora_workflow(),
    }


def render(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    parser.add_argument("--out", type=pathlib.Path, default=WORKFLOWS_DIR, help="folder to write (default: workflows/)")
    args = parser.parse_args(argv)
    stale = []
    for name, workflow in all_workflows().items():
        path = args.out / name
        text = render(workflow)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python -m tools.build_workflows): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
