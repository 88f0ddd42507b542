"""diffusers 0.42.1 velocities of the tiny Ideogram 4 DiT with LoRAs, for tests/host/test_inprocess_lora.py.

The in-process LoRA tests run in a ComfyUI host's Python, which has no diffusers or peft; they run this script
with a Python that has both (the pack's test venv) and compare. Usage:

    python diffusers_lora_oracle.py JOB.json OUT.safetensors

JOB.json: ``{"inputs": inputs.safetensors (tokens, features, t), "grid": [h, w], "cases": {name: case}}``, a case
being either ``{"base": official weights, "lora": file, "metadata": LoraConfig dict or null, "strength": s}``
(diffusers loads the file itself: ``Ideogram4LoraLoaderMixin.lora_state_dict`` converts the non-diffusers layouts,
then PEFT's ``load_lora_adapter`` on ``Ideogram4Transformer2DModel``) or ``{"base": merged official weights}``
(weights the test merged by hand, for layouts diffusers cannot read). OUT holds each case's image velocity.
"""

from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE), str(HERE.parent / "unit")]

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ideogram4.packing import pack_conditional  # noqa: E402
from tiny_dit import build_diffusers_oracle  # noqa: E402
from tiny_host_models import DIT_CONFIG  # noqa: E402


def velocity(model, inputs, grid) -> torch.Tensor:
    packed = pack_conditional(inputs["tokens"], inputs["features"], None, *grid)
    batch, length, _ = packed.x.shape
    features = torch.zeros(batch, length, packed.text_features.shape[-1])
    features[:, : packed.text_features.shape[1]] = packed.text_features
    with torch.no_grad():
        out = model(hidden_states=packed.x, timestep=inputs["t"], encoder_hidden_states=features,
                    position_ids=packed.positions, segment_ids=packed.segment_ids, indicator=packed.indicators).sample
    return out[:, packed.image_slice].float().contiguous()


def run_case(case: dict, inputs, grid) -> torch.Tensor:
    from diffusers.loaders import Ideogram4LoraLoaderMixin

    model = build_diffusers_oracle(DIT_CONFIG, load_file(case["base"]))
    if "lora" in case:
        state, metadata = Ideogram4LoraLoaderMixin.lora_state_dict(case["lora"], return_lora_metadata=True)
        if case.get("metadata") is not None:
            metadata = {f"transformer.{key}": value for key, value in case["metadata"].items()}
        model.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="lora")
        model.set_adapters(["lora"], weights=[case.get("strength", 1.0)])
    return velocity(model.eval(), inputs, grid)


def main(job_path: str, out_path: str) -> None:
    job = json.loads(pathlib.Path(job_path).read_text())
    inputs = load_file(job["inputs"])
    save_file({name: run_case(case, inputs, job["grid"]) for name, case in job["cases"].items()}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
