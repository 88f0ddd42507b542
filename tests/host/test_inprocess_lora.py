"""In-process host tests of the Ideogram 4 LoRA Loader (nodes/lora_loader.py; run in the host's Python, see
comfy_inprocess.py).

* Oracle: for each trainer layout, the same LoRA matrices written in that layout give the patched model a velocity
  within 1e-5 (float32) of diffusers 0.42.1 loading the LoRA itself (PEFT on ``Ideogram4Transformer2DModel``,
  through ``Ideogram4LoraLoaderMixin``, which converts the ai-toolkit / kohya layouts). diffusers runs in a
  subprocess (diffusers_lora_oracle.py) under a Python that has it. Layouts diffusers cannot read (kohya
  ``lora_unet_``, LyCORIS LoKr/LoHa, ``dora_scale``, ``diff``) are compared with diffusers loading the same matrices
  in a layout it reads, or with diffusers run on weights merged by hand (``W + scale * product``).
* ComfyUI behaviour: chained loaders add up; strength 0 is bit-identical; the un-patched model gives its old output
  bit for bit after a LoRA run; an uncond-only LoRA changes only the uncond velocity; a partial load under a memory
  cap gives the same latent; native ``LoraLoaderModelOnly`` reads the official raw-key layout; unmapped keys are
  reported; a file that maps nothing is a node error.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess

import pytest
import torch

import comfy_inprocess

comfy_inprocess.skip_module_unless_in_host()

import tiny_host_models as tiny  # noqa: E402  (imports torch and the core; only worth it in the host)
from safetensors.torch import load_file, save_file  # noqa: E402

GRID_H, GRID_W = 3, 4
TIME = 0.3
RANK, ALPHA = 4, 3.0
TOLERANCE = 1e-5
ORACLE_SCRIPT = pathlib.Path(__file__).resolve().parent / "diffusers_lora_oracle.py"
ORACLE_PYTHON_VARIABLE = "IDEOGRAM4_ORACLE_PYTHON"

BLOCK_MODULES = [f"layers.{i}.{name}" for i in range(tiny.DIT_CONFIG.num_layers)
                 for name in ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                              "adaln_modulation")]
EMBEDDER_MODULES = ["input_proj", "llm_cond_proj", "t_embedding.mlp_in", "t_embedding.mlp_out", "adaln_proj",
                    "final_layer.linear", "final_layer.adaln_modulation"]


# ---------------------------------------------------------------------------------------------------------------
# LoRA matrices and the layouts they are written in
# ---------------------------------------------------------------------------------------------------------------

def base_weights() -> dict[str, torch.Tensor]:
    return tiny.dit_state_dict(seed=1)  # the weights of tiny.COND_FILE


def random_lora(modules, seed, rank=RANK) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (down (rank, in), up (out, rank)); the product is about half the size of the weight it patches."""
    shapes = {key: value.shape for key, value in base_weights().items()}
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for module in modules:
        out_features, in_features = shapes[module + ".weight"]
        lora[module] = (torch.randn(rank, in_features, generator=generator) / in_features ** 0.5,
                        torch.randn(out_features, rank, generator=generator) * 0.5 / rank ** 0.5)
    return lora


def diffusers_modules(lora):
    """The same LoRA on diffusers' modules: a fused-qkv LoRA is three LoRAs sharing ``down`` with the thirds of ``up``
    (exactly the same weight change), ``attention.o`` is ``attention.to_out.0``."""
    split = {}
    for module, (down, up) in lora.items():
        if module.endswith(".attention.qkv"):
            for part, third in zip(("to_q", "to_k", "to_v"), up.chunk(3)):
                split[module[: -len("qkv")] + part] = (down, third.contiguous())
        elif module.endswith(".attention.o"):
            split[module[: -len("o")] + "to_out.0"] = (down, up)
        else:
            split[module] = (down, up)
    return split


def write_pairs(lora, prefix, down_name, up_name, alpha=None, underscore=False):
    tensors = {}
    for module, (down, up) in lora.items():
        stem = prefix + (module.replace(".", "_") if underscore else module)
        tensors[f"{stem}.{down_name}"] = down.clone()
        tensors[f"{stem}.{up_name}"] = up.clone()
        if alpha is not None:
            tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    return tensors


def peft_metadata(modules, **config):
    return {"r": RANK, "lora_alpha": ALPHA, "target_modules": sorted(modules), **config}


def dora_magnitudes(lora, seed, scale):
    """One magnitude per output row: the row norms of the adapted weight, perturbed (a trained DoRA's look)."""
    base = base_weights()
    generator = torch.Generator().manual_seed(seed)
    magnitudes = {}
    for module, (down, up) in lora.items():
        adapted = base[module + ".weight"] + scale * up @ down
        magnitudes[module] = adapted.norm(dim=1) * (1 + 0.3 * torch.rand(up.shape[0], generator=generator))
    return magnitudes


def merged(deltas: dict[str, torch.Tensor], base=None) -> dict[str, torch.Tensor]:
    """Official weights with hand-computed changes added (``module.weight`` / ``module.bias`` keys)."""
    weights = dict(base_weights() if base is None else base)
    for key, delta in deltas.items():
        weights[key] = weights[key] + delta
    return weights


# ---------------------------------------------------------------------------------------------------------------
# Files and oracle cases
# ---------------------------------------------------------------------------------------------------------------

BLOCK_LORA = random_lora(BLOCK_MODULES, seed=31)
ALL_LORA = random_lora(BLOCK_MODULES + EMBEDDER_MODULES, seed=32)
DORA_LORA = random_lora([m for m in BLOCK_MODULES if ".attention." in m or "feed_forward.w1" in m], seed=33)
DORA_MAGNITUDES = dora_magnitudes(DORA_LORA, seed=34, scale=ALPHA / RANK)
LYCORIS_MODULES = ["layers.0.attention.to_q", "layers.1.attention.to_v", "layers.0.attention.to_out.0",
                   "layers.1.feed_forward.w1", "layers.0.adaln_modulation"]
OFFICIAL_OF = {"to_q": ("attention.qkv", 0), "to_k": ("attention.qkv", 1), "to_v": ("attention.qkv", 2)}


def official_target(module):
    """diffusers module -> (official weight key, row third or None)."""
    head, _, name = module.rpartition(".attention.")
    if name in OFFICIAL_OF:
        return f"{head}.attention.qkv.weight", OFFICIAL_OF[name][1]
    if name == "to_out.0":
        return f"{head}.attention.o.weight", None
    return module + ".weight", None


def add_delta(deltas, module, delta):
    key, third = official_target(module)
    if third is None:
        deltas[key] = deltas.get(key, 0) + delta
    else:
        full = torch.zeros_like(base_weights()[key])
        full.chunk(3)[third].copy_(delta)
        deltas[key] = deltas.get(key, 0) + full


def lycoris_file(seed, factors_of):
    """A LyCORIS file (SimpleTuner ``lycoris_`` prefix, diffusers module names) on :data:`LYCORIS_MODULES` and its
    hand-computed weight changes; ``factors_of(generator, out, in)`` -> ({parameter: tensor}, weight change)."""
    shapes = {key: value.shape for key, value in base_weights().items()}
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for module in LYCORIS_MODULES:
        key, third = official_target(module)
        factors, delta = factors_of(generator, shapes[key][0] // (1 if third is None else 3), shapes[key][1])
        stem = "lycoris_" + module.replace(".", "_")
        tensors.update({f"{stem}.{name}": value for name, value in factors.items()})
        add_delta(deltas, module, delta)
    return tensors, deltas


def lokr_factors(generator, out_features, in_features):
    """LoKr, w1 full and w2 = w2_a @ w2_b of rank 2: kron(w1, w2) * alpha / rank."""
    w1 = torch.randn(4, 4, generator=generator) * 0.5
    w2_a = torch.randn(out_features // 4, 2, generator=generator) / 2 ** 0.5
    w2_b = torch.randn(2, in_features // 4, generator=generator) / (in_features // 4) ** 0.5
    factors = {"lokr_w1": w1, "lokr_w2_a": w2_a, "lokr_w2_b": w2_b, "alpha": torch.tensor(1.5)}
    return factors, torch.kron(w1, w2_a @ w2_b) * (1.5 / 2)


def loha_factors(generator, out_features, in_features):
    """LoHa of rank 3: (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank."""
    w1_a, w2_a = (torch.randn(out_features, 3, generator=generator) / 3 ** 0.25 for _ in range(2))
    w1_b, w2_b = (torch.randn(3, in_features, generator=generator) / (3 * in_features) ** 0.25 for _ in range(2))
    factors = {"hada_w1_a": w1_a, "hada_w1_b": w1_b, "hada_w2_a": w2_a, "hada_w2_b": w2_b, "alpha": torch.tensor(2.0)}
    return factors, (w1_a @ w1_b) * (w2_a @ w2_b) * (2.0 / 3)


def diff_file(seed=43):
    """Full-weight differences: ``diff`` on weights, ``diff_b`` on biases, ai-toolkit prefix."""
    base = base_weights()
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for key in ("layers.0.feed_forward.w2.weight", "layers.1.attention.qkv.weight", "final_layer.linear.weight",
                "layers.1.adaln_modulation.bias", "t_embedding.mlp_in.bias"):
        delta = torch.randn(base[key].shape, generator=generator) * base[key].std() * 0.5
        module, _, kind = key.rpartition(".")
        tensors[f"diffusion_model.{module}.{'diff' if kind == 'weight' else 'diff_b'}"] = delta
        deltas[key] = delta
    return tensors, deltas


def raw_official_file():
    """The raw official layout ComfyUI's generic LoRA keys read: ``diffusion_model.<module>.lora_A/lora_B``."""
    return write_pairs(BLOCK_LORA, "diffusion_model.", "lora_A.weight", "lora_B.weight")


def save_with_metadata(tensors, path, config=None):
    metadata = None if config is None else {
        "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    save_file(tensors, str(path), metadata=metadata)


def write_lora_files(loras: pathlib.Path) -> dict:
    """Write every layout into ``loras``; returns {case: oracle case (paths relative to ``loras``)}."""
    loras.mkdir(parents=True, exist_ok=True)
    cases = {}

    save_file(raw_official_file(), str(loras / "ai_toolkit.safetensors"))
    cases["ai_toolkit"] = {"lora": "ai_toolkit.safetensors"}

    kohya = write_pairs(BLOCK_LORA, "diffusion_model.", "lora_down.weight", "lora_up.weight", alpha=ALPHA)
    save_file(kohya, str(loras / "kohya_dotted.safetensors"))
    cases["kohya_dotted"] = {"lora": "kohya_dotted.safetensors"}
    save_file(write_pairs(BLOCK_LORA, "lora_unet_", "lora_down.weight", "lora_up.weight", alpha=ALPHA,
                          underscore=True), str(loras / "kohya_unet.safetensors"))
    cases["kohya_unet"] = {"lora": "kohya_dotted.safetensors"}  # diffusers reads only the dotted kohya keys

    split = diffusers_modules(ALL_LORA)
    save_with_metadata(write_pairs(split, "transformer.", "lora_A.weight", "lora_B.weight"),
                       loras / "diffusers.safetensors", peft_metadata(split))
    cases["diffusers"] = {"lora": "diffusers.safetensors"}
    cases["diffusers@0.5"] = {"lora": "diffusers.safetensors", "strength": 0.5}

    peft_dir = loras / "peft_adapter"
    peft_dir.mkdir(exist_ok=True)
    config = peft_metadata(split, lora_alpha=8.0, alpha_pattern={"feed_forward.w2": 2.0})
    save_file(write_pairs(split, "base_model.model.", "lora_A.weight", "lora_B.weight"),
              str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps(config))
    cases["peft_adapter"] = {"lora": "diffusers.safetensors", "metadata": config}

    dora_split = diffusers_modules(DORA_LORA)
    dora_magnitudes_split = {}
    for module, magnitude in DORA_MAGNITUDES.items():
        if module.endswith(".attention.qkv"):
            for part, third in zip(("to_q", "to_k", "to_v"), magnitude.chunk(3)):
                dora_magnitudes_split[module[: -len("qkv")] + part] = third
        elif module.endswith(".attention.o"):
            dora_magnitudes_split[module[: -len("o")] + "to_out.0"] = magnitude
        else:
            dora_magnitudes_split[module] = magnitude
    peft_dora = write_pairs(dora_split, "transformer.", "lora_A.weight", "lora_B.weight")
    peft_dora.update({f"transformer.{m}.lora_magnitude_vector": v for m, v in dora_magnitudes_split.items()})
    save_with_metadata(peft_dora, loras / "dora_peft.safetensors", peft_metadata(dora_split, use_dora=True))
    cases["dora_peft"] = {"lora": "dora_peft.safetensors"}
    kohya_dora = write_pairs(DORA_LORA, "lora_unet_", "lora_down.weight", "lora_up.weight", alpha=ALPHA,
                             underscore=True)
    kohya_dora.update({f"lora_unet_{m.replace('.', '_')}.dora_scale": v.reshape(-1, 1)
                       for m, v in DORA_MAGNITUDES.items()})
    save_file(kohya_dora, str(loras / "dora_kohya.safetensors"))
    cases["dora_kohya"] = {"lora": "dora_peft.safetensors"}

    builds = {"lokr": lambda: lycoris_file(41, lokr_factors), "loha": lambda: lycoris_file(42, loha_factors),
              "diff": diff_file}
    for name, build in builds.items():
        tensors, deltas = build()
        save_file(tensors, str(loras / f"{name}.safetensors"))
        save_file(merged(deltas), str(loras / f"{name}_merged_oracle.safetensors"))
        cases[name] = {"merged": f"{name}_merged_oracle.safetensors"}
    return cases


PACK_FILE_OF_CASE = {"ai_toolkit": "ai_toolkit.safetensors", "kohya_dotted": "kohya_dotted.safetensors",
                     "kohya_unet": "kohya_unet.safetensors", "diffusers": "diffusers.safetensors",
                     "diffusers@0.5": "diffusers.safetensors", "peft_adapter": "peft_adapter/adapter_model.safetensors",
                     "dora_peft": "dora_peft.safetensors", "dora_kohya": "dora_kohya.safetensors",
                     "lokr": "lokr.safetensors", "loha": "loha.safetensors", "diff": "diff.safetensors"}


@pytest.fixture(scope="module")
def add_model_files():
    def add(models_dir):
        cases = write_lora_files(models_dir / "loras")
        (models_dir / "lora_cases.json").write_text(json.dumps(cases))
        save_file(tiny.dit_state_dict(seed=1), str(models_dir / "base_oracle.safetensors"))
    return add


# ---------------------------------------------------------------------------------------------------------------
# Running the pack and the oracle
# ---------------------------------------------------------------------------------------------------------------

def inputs():
    generator = torch.Generator().manual_seed(8)
    tokens = torch.randn((1, GRID_H * GRID_W, 128), generator=generator)
    features = torch.randn((1, 5, tiny.DIT_CONFIG.llm_features_dim), generator=generator)
    return tokens, features


def pack_velocity(patcher) -> torch.Tensor:
    """The conditional velocity of ``patcher``'s model, loaded (patches applied) the way ComfyUI loads it."""
    import comfy.model_management

    from ideogram4.velocity import conditional_velocity

    comfy.model_management.load_models_gpu([patcher])
    tokens, features = inputs()
    with torch.no_grad():
        return conditional_velocity(patcher.model.diffusion_model, tokens, TIME, features, None, GRID_H, GRID_W,
                                    dtype=torch.float32)


def oracle_python() -> str:
    """A Python with diffusers and peft: ``$IDEOGRAM4_ORACLE_PYTHON`` (the in-process driver sets it to the pack's
    test venv), else the repository's ``.venv``."""
    candidates = [os.environ.get(ORACLE_PYTHON_VARIABLE), str(comfy_inprocess.PACK_ROOT / ".venv" / "bin" / "python")]
    for python in filter(None, candidates):
        if pathlib.Path(python).is_file() and subprocess.run(
                [python, "-c", "import diffusers, peft"], capture_output=True, timeout=300).returncode == 0:
            return python
    pytest.skip(f"the diffusers oracle needs a Python with diffusers 0.42.1 and peft: set {ORACLE_PYTHON_VARIABLE} "
                "(the in-process driver sets it to the pack's test venv)")


def run_oracle(models_dir: pathlib.Path, cases: dict, tmp_path: pathlib.Path) -> dict[str, torch.Tensor]:
    tokens, features = inputs()
    save_file({"tokens": tokens, "features": features, "t": torch.full((1,), TIME, dtype=torch.float32)},
              str(tmp_path / "inputs.safetensors"))
    loras = models_dir / "loras"
    job_cases = {}
    for name, case in cases.items():
        if "merged" in case:
            job_cases[name] = {"base": str(loras / case["merged"])}
        else:
            job_cases[name] = {"base": case.get("base", str(models_dir / "base_oracle.safetensors")),
                               "lora": str(loras / case["lora"]), "metadata": case.get("metadata"),
                               "strength": case.get("strength", 1.0)}
    job = {"inputs": str(tmp_path / "inputs.safetensors"), "grid": [GRID_H, GRID_W], "cases": job_cases}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = subprocess.run([oracle_python(), str(ORACLE_SCRIPT), str(tmp_path / "job.json"),
                             str(tmp_path / "oracle.safetensors")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"the diffusers oracle failed:\n{result.stderr[-4000:]}"
    return load_file(str(tmp_path / "oracle.safetensors"))


def load_pair(host, cond_file=tiny.COND_FILE, uncond_file=tiny.UNCOND_FILE, weight_dtype="default"):
    return comfy_inprocess.run_node(host.nodes.dit_loader.DiTLoader, cond_model_name=cond_file,
                                    uncond_model_name=uncond_file, weight_dtype=weight_dtype)


def apply_lora(host, cond, uncond, lora_name, strength_cond=1.0, strength_uncond=0.0):
    output = host.nodes.lora_loader.LoraLoader.execute(cond_model=cond, uncond_model=uncond, lora_name=lora_name,
                                                       strength_cond=strength_cond, strength_uncond=strength_uncond)
    return output.args[0], output.args[1], output.ui


@pytest.fixture(scope="module")
def pair(host, models):
    return load_pair(host)


@pytest.fixture(scope="module")
def oracle(models, tmp_path_factory):
    cases = json.loads((models / "lora_cases.json").read_text())
    return run_oracle(models, cases, tmp_path_factory.mktemp("oracle"))


# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(PACK_FILE_OF_CASE))
def test_every_layout_gives_the_diffusers_velocity(host, pair, oracle, case):
    strength = 0.5 if case.endswith("@0.5") else 1.0
    cond, _, _ = apply_lora(host, *pair, PACK_FILE_OF_CASE[case], strength_cond=strength)
    ours = pack_velocity(cond)
    unpatched = pack_velocity(pair[0])
    assert (oracle[case] - unpatched).abs().max() > 0.05  # the LoRA changes the velocity noticeably
    assert (ours - oracle[case]).abs().max().item() <= TOLERANCE


def test_strength_zero_is_bit_identical(host, pair):
    cond, uncond = pair
    before = pack_velocity(cond)
    patched_cond, patched_uncond, _ = apply_lora(host, cond, uncond, "ai_toolkit.safetensors", strength_cond=0.0)
    assert torch.equal(pack_velocity(patched_cond), before)
    assert patched_uncond is uncond  # strength_uncond defaults to 0: the uncond MODEL passes through


def test_removing_the_loader_restores_the_unpatched_output_bit_for_bit(host, pair):
    cond, uncond = pair
    before = pack_velocity(cond)
    patched_cond, _, _ = apply_lora(host, cond, uncond, "kohya_unet.safetensors")
    assert not torch.equal(pack_velocity(patched_cond), before)
    assert torch.equal(pack_velocity(cond), before)  # no patch left in the shared model


def test_chained_loaders_add_up(host, pair):
    """Two loaders in a row give the weights with both changes: diff (hand-computed) then a LoKr on top."""
    cond, uncond = pair
    first, uncond_first, _ = apply_lora(host, cond, uncond, "diff.safetensors")
    chained, _, _ = apply_lora(host, first, uncond_first, "kohya_unet.safetensors", strength_cond=0.7)
    key = "diffusion_model.layers.0.feed_forward.w2.weight"
    assert len(chained.patches[key]) == 2 and len(first.patches[key]) == 1
    import comfy.model_management

    comfy.model_management.load_models_gpu([chained])
    weight = chained.model.diffusion_model.layers[0].feed_forward.w2.weight.detach().clone()
    _, deltas = diff_file()
    down, up = BLOCK_LORA["layers.0.feed_forward.w2"]
    expected = base_weights()["layers.0.feed_forward.w2.weight"] + deltas["layers.0.feed_forward.w2.weight"] \
        + 0.7 * (ALPHA / RANK) * up @ down
    assert (weight - expected).abs().max().item() <= 1e-6


def test_uncond_only_lora_changes_only_the_uncond_velocity(host, pair):
    from ideogram4.velocity import unconditional_velocity

    import comfy.model_management

    cond, uncond = pair
    tokens, _ = inputs()

    def uncond_velocity(patcher):
        comfy.model_management.load_models_gpu([patcher])
        with torch.no_grad():
            return unconditional_velocity(patcher.model.diffusion_model, tokens, TIME, GRID_H, GRID_W,
                                          dtype=torch.float32)

    cond_before, uncond_before = pack_velocity(cond), uncond_velocity(uncond)
    patched_cond, patched_uncond, _ = apply_lora(host, cond, uncond, "ai_toolkit.safetensors", strength_cond=0.0,
                                                 strength_uncond=1.0)
    assert torch.equal(pack_velocity(patched_cond), cond_before)
    assert (uncond_velocity(patched_uncond) - uncond_before).abs().max() > 0.05


def test_partial_loading_under_a_memory_cap_gives_the_same_latent(host, pair, models, monkeypatch):
    """The pack Sampler with a LoRA on both branches, fully loaded and with ComfyUI told it has memory for a
    third of each model: the streamed layers get their patches per call, the latent is the same."""
    import comfy.model_management

    cond, uncond = pair
    patched_cond, patched_uncond, _ = apply_lora(host, cond, uncond, "diffusers.safetensors", strength_uncond=0.5)
    (encoder,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncoderLoader,
                                          text_encoder_name=tiny.TEXT_ENCODER_FILE)
    (conditioning,) = comfy_inprocess.run_node(host.nodes.text_encoder_nodes.TextEncode, text_encoder=encoder,
                                               prompt="a red wall")

    def sample():
        (latent,) = comfy_inprocess.run_node(
            host.nodes.sampler_node.Sampler, cond_model=patched_cond, uncond_model=patched_uncond,
            conditioning=conditioning, preset="Custom", steps=2, mu=0.0, std=1.75, guidance_schedule="4",
            seed=5, width=64, height=48, batch_size=1)
        return latent["samples"]

    full = sample()
    comfy.model_management.unload_all_models()
    # A CPU host always loads whole; the DiTs are loaded here as ComfyUI loads a model that does not fit (a
    # partial load of a third of each), and the other models as usual.
    original = comfy.model_management.load_models_gpu
    dits = (patched_cond, patched_uncond)
    streamed_layers = []

    def capped(models_to_load, *args, **kwargs):
        for patcher in models_to_load:
            if patcher in dits:
                patcher.load(torch.device("cpu"), lowvram_model_memory=int(patcher.model_size() * 0.35))
                assert patcher.model.model_lowvram
                streamed_layers.append(sum(hasattr(m, "prev_comfy_cast_weights")
                                           for m in patcher.model.diffusion_model.modules()))
        return original([patcher for patcher in models_to_load if patcher not in dits], *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", capped)
    try:
        streamed = sample()
    finally:
        monkeypatch.undo()
        for patcher in dits:
            patcher.detach()
    assert len(streamed_layers) == 2 and all(count > 0 for count in streamed_layers)
    assert torch.allclose(streamed, full, atol=1e-6, rtol=0)


def test_native_lora_loader_model_only_reads_the_official_raw_layout(host, pair):
    cond, uncond = pair
    native = comfy_inprocess.native_node("nodes", "LoraLoaderModelOnly")
    (native_cond,) = comfy_inprocess.run_node(native, model=cond, lora_name="ai_toolkit.safetensors",
                                              strength_model=1.0)
    pack_cond, _, _ = apply_lora(host, cond, uncond, "ai_toolkit.safetensors")
    assert set(native_cond.patches) == set(pack_cond.patches)
    assert torch.equal(pack_velocity(native_cond), pack_velocity(pack_cond))


def test_unmapped_keys_are_reported_on_the_node_and_in_the_log(host, pair, models, caplog):
    tensors = raw_official_file()
    tensors.update({f"lora_te1_text_model_encoder_layers_{i}_mlp_fc1.lora_down.weight": torch.ones(2, 4)
                    for i in range(7)})
    save_file(tensors, str(models / "loras" / "with_text_encoder.safetensors"))
    with caplog.at_level(logging.WARNING):
        cond, _, shown = apply_lora(host, *pair, "with_text_encoder.safetensors")
    text = json.dumps(shown.as_dict() if hasattr(shown, "as_dict") else str(shown))
    assert "7 keys, e.g.: lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight" in text
    assert "7 keys" in caplog.text and "with_text_encoder.safetensors" in caplog.text
    assert len(cond.patches) == len(BLOCK_LORA)


def test_a_file_where_nothing_maps_is_a_node_error(host, pair, models):
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 4)},
              str(models / "loras" / "text_encoder_only.safetensors"))
    with pytest.raises(ValueError, match=r"^Ideogram 4 LoRA Loader: lora_name text_encoder_only\.safetensors: no key "
                                         r"names a weight.*lora_te1_text_model.*Understood: official module names"):
        apply_lora(host, *pair, "text_encoder_only.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Quantised storage: the patch applies to the de-quantised weight, which stays quantised in memory
# ---------------------------------------------------------------------------------------------------------------

def is_block_matrix(key, tensor) -> bool:
    return key.startswith("layers.") and key.endswith(".weight") and tensor.ndim == 2


def write_quantised_files(folder: pathlib.Path) -> dict[str, tuple[str, str, str, dict]]:
    """{storage: (cond file, uncond file, weight_dtype, de-quantised float32 cond weights for the oracle)}.

    The oracle's weights come from the core's de-quantisers (checked bit for bit against the official rule, gguf
    and bitsandbytes in tests/unit) or, where the loader quantises itself (fp8 / fp8_fast on a float32 file), from
    quantising and de-quantising each block matrix by the official per-row rule."""
    from ideogram4.dit_checkpoint import load_dit_checkpoint
    from ideogram4.quantization import dequantize_fp8_rowwise, quantize_fp8_rowwise
    from tools.quantized_weights import gguf_dit_types, store_nf4, write_gguf

    base = base_weights()
    requantised = {key: dequantize_fp8_rowwise(*quantize_fp8_rowwise(value), dtype=torch.float32)
                   if is_block_matrix(key, value) else value for key, value in base.items()}
    for role, weights in (("cond", base), ("uncond", tiny.dit_state_dict(seed=2))):
        write_gguf(folder / f"{role}_q8_0.gguf", weights, gguf_dit_types("Q8_0"), "ideogram4")
        save_file(store_nf4(weights, is_block_matrix), str(folder / f"{role}_nf4.safetensors"))
    files = {"fp8 file, default": (tiny.COND_FP8_FILE, tiny.UNCOND_FP8_FILE, "default"),
             "fp8": (tiny.COND_FILE, tiny.UNCOND_FILE, "fp8"), "fp8_fast": (tiny.COND_FILE, tiny.UNCOND_FILE, "fp8_fast"),
             "gguf Q8_0": ("cond_q8_0.gguf", "uncond_q8_0.gguf", "default"),
             "nf4": ("cond_nf4.safetensors", "uncond_nf4.safetensors", "default")}
    storages = {}
    for storage, (cond_name, uncond_name, weight_dtype) in files.items():
        if weight_dtype == "default":
            dequantised = load_dit_checkpoint(folder / cond_name, dtype=torch.float32).state_dict
        else:
            dequantised = requantised
        storages[storage] = (cond_name, uncond_name, weight_dtype, dequantised)
    return storages


QUANTISED_LORAS = {"diffusers": "diffusers.safetensors", "dora_peft": "dora_peft.safetensors"}
# fp8_fast multiplies the block token Linears that carry no patch in fp8 (activations quantised per token) where the
# device can: the DoRA file leaves w2/w3 unpatched, so those stay approximate (the LoRA of "diffusers" patches every
# block Linear, and patched layers always use their de-quantised, patched weight).
FP8_FAST_UNPATCHED_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def quantised(host, models, tmp_path_factory):
    """{storage: (cond patcher, uncond patcher)} and the oracle's velocities {f"{storage}|{lora}": velocity}."""
    folder = models / "diffusion_models"
    storages = write_quantised_files(folder)
    loaders = {}
    cases = {}
    for storage, (cond_name, uncond_name, weight_dtype, dequantised) in storages.items():
        loaders[storage] = host.nodes.dit_loader.load_dit_patchers(str(folder / cond_name), str(folder / uncond_name),
                                                                   weight_dtype)
        base_file = models / f"oracle_base_{len(cases)}.safetensors"
        save_file({key: value.contiguous() for key, value in dequantised.items()}, str(base_file))
        for lora_case, lora_file in QUANTISED_LORAS.items():
            cases[f"{storage}|{lora_case}"] = {"lora": lora_file, "base": str(base_file)}
    return loaders, run_oracle(models, cases, tmp_path_factory.mktemp("quantised_oracle"))


@pytest.mark.parametrize("lora_case", list(QUANTISED_LORAS))
@pytest.mark.parametrize("storage", ["fp8 file, default", "fp8", "fp8_fast", "gguf Q8_0", "nf4"])
def test_lora_on_quantised_weights_gives_the_diffusers_velocity_on_the_dequantised_weights(host, quantised, storage,
                                                                                         lora_case):
    loaders, oracle = quantised
    cond, uncond = loaders[storage]
    qkv = cond.model.diffusion_model.get_submodule("layers.0.attention.qkv")
    stored = qkv.weight.detach().clone()
    assert stored.dtype not in (torch.float32, torch.bfloat16)  # the weight is held quantised
    patched, _, _ = apply_lora(host, cond, uncond, QUANTISED_LORAS[lora_case])
    ours = pack_velocity(patched)
    tolerance = TOLERANCE
    if storage == "fp8_fast" and lora_case == "dora_peft" and any(
            getattr(m, "fp8_compute", False) for m in cond.model.diffusion_model.modules()):
        tolerance = FP8_FAST_UNPATCHED_TOLERANCE
    assert (ours - oracle[f"{storage}|{lora_case}"]).abs().max().item() <= tolerance
    assert qkv.weight.dtype == stored.dtype  # still quantised while patched
    import comfy.model_management

    comfy.model_management.unload_all_models()
    assert torch.equal(qkv.weight.detach().view(torch.uint8), stored.view(torch.uint8))
