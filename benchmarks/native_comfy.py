"""ComfyUI's native Ideogram 4 DiT (``comfy.ldm.ideogram4.model``), built from a ComfyUI source tree, for comparison.

The benchmark runs the native model in the same process as the pack, on the same weight tensors (the native model
uses the same bare official key names, so ``load_state_dict(..., assign=True)`` shares storage: no second copy of
18.6 GB per model on the GPU).

ComfyUI's calling convention differs from the pack's; :func:`native_velocity` translates:

    pack                                      ComfyUI native ``forward(x, timesteps, context)``
    z tokens (B, N, 128), raster order        x (B, 128, gh, gw), FLUX.2 channel order c*4 + pi*2 + pj
    t in [0, 1], 0 = noise                    timesteps = sigma = 1 - t  (native computes t = 1 - sigma in fp32)
    text features (B, n, F)                   context = the same features (None for the unconditional model)
    returns v                                 returns -v (ComfyUI's flow output ``noise - x0``)

Nothing of ComfyUI is copied here: the code is imported from the given source tree (``--comfyui``, default
``$COMFYUI_PATH`` or ``~/comfy/ComfyUI``). ComfyUI's own dependencies (comfy-kitchen, comfy-aimdo, ...) must be
importable in the running Python.
"""

from __future__ import annotations

import os
import pathlib
import sys

import torch

from ideogram4.dit_config import DiTConfig
from ideogram4.latent import comfy_latent_to_tokens, tokens_to_comfy_latent

DEFAULT_COMFYUI = pathlib.Path(os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI")).expanduser()

# The native model hard-codes these eps values; a config with others cannot be compared.
_NATIVE_EPS = {"qk_norm_eps": 1e-5, "llm_cond_norm_eps": 1e-6, "final_norm_eps": 1e-6}


class NativeUnavailable(RuntimeError):
    """ComfyUI's native Ideogram 4 model cannot be imported here; the message says why and what to do."""


def import_native_model_class(comfyui_path: str | os.PathLike | None = None, device_type: str = "cuda"):
    """Import ComfyUI (once) and return ``Ideogram4Transformer2DModel`` and ``comfy.ops``.

    ComfyUI chooses its device when ``comfy.model_management`` is first imported, so for a CPU run ``--cpu`` is set
    on its argument namespace before that import. On CPU ComfyUI would also fall back to split attention; it is
    switched to PyTorch SDPA (what it uses by default on NVIDIA) so CPU figures compare like with like.
    """
    if "comfy.ldm.ideogram4.model" not in sys.modules:
        root = pathlib.Path(comfyui_path).expanduser() if comfyui_path else DEFAULT_COMFYUI
        if not (root / "comfy" / "ldm" / "ideogram4" / "model.py").is_file():
            raise NativeUnavailable(
                f"No ComfyUI with native Ideogram 4 at {root} (comfy/ldm/ideogram4/model.py is missing). Pass "
                "--comfyui PATH (a ComfyUI >= 0.33 source tree) or set COMFYUI_PATH.")
        inserted = "comfy" not in sys.modules and str(root) not in sys.path
        if inserted:
            # First on the path: ComfyUI's top-level modules must win inside ComfyUI's own imports.
            sys.path.insert(0, str(root))
        try:
            from comfy.cli_args import args

            if "comfy.model_management" not in sys.modules:
                args.cpu = device_type == "cpu"
                if device_type == "cpu":
                    args.use_pytorch_cross_attention = True
            import comfy.ldm.ideogram4.model  # noqa: F401
        except ImportError as error:
            if inserted:  # leave no half-imported ComfyUI behind (its nodes.py would shadow this repo's nodes/)
                sys.path.remove(str(root))
                for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
                    del sys.modules[name]
            raise NativeUnavailable(
                f"ComfyUI at {root} could not be imported in this Python ({sys.executable}): {error}. Run with the "
                "ComfyUI venv's Python, or install its requirements (comfy-kitchen, comfy-aimdo, ...) here.") from error
    import comfy.ops
    from comfy.ldm.ideogram4.model import Ideogram4Transformer2DModel

    return Ideogram4Transformer2DModel, comfy.ops


def build_native_dit(config: DiTConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                     device: torch.device | str, operations: str = "disable_weight_init",
                     comfyui_path=None) -> torch.nn.Module:
    """The native model with ``state_dict`` (official keys) assigned, sharing its tensors; eval mode.

    ``operations``: ``"disable_weight_init"`` (weights already in the compute dtype: ComfyUI's fastest path) or
    ``"manual_cast"`` (cast per call, as ComfyUI does when weight and compute dtypes differ).
    """
    device = torch.device(device)
    for name, value in _NATIVE_EPS.items():
        if getattr(config, name) != value:
            raise ValueError(f"native ComfyUI hard-codes {name}={value}; the config has {getattr(config, name)}.")
    model_class, ops = import_native_model_class(comfyui_path, device.type)
    if operations not in ("disable_weight_init", "manual_cast"):
        raise ValueError(f"operations must be 'disable_weight_init' or 'manual_cast', got {operations!r}.")
    model = model_class(
        in_channels=config.in_channels, num_layers=config.num_layers,
        num_attention_heads=config.num_attention_heads, attention_head_dim=config.attention_head_dim,
        intermediate_size=config.intermediate_size, adaln_dim=config.adaln_dim,
        llm_features_dim=config.llm_features_dim, rope_theta=config.rope_theta,
        mrope_section=config.mrope_section, norm_eps=config.norm_eps,
        dtype=dtype, device="meta", operations=getattr(ops, operations))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def native_velocity(model: torch.nn.Module, z: torch.Tensor, t: float, text_features: torch.Tensor | None,
                    grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
    """One native forward in the pack's convention: z (B, N, 128) float32 -> velocity v (B, N, 128) float32.

    ``text_features`` (B, n, F) for the conditional model, None for the unconditional one. The timestep goes in as
    sigma = 1 - t in float32, as ComfyUI's ``BaseModel._apply_model`` passes it.
    """
    x = tokens_to_comfy_latent(z, grid_h, grid_w).to(dtype)
    sigma = torch.full((z.shape[0],), 1.0 - t, dtype=torch.float32, device=z.device)
    context = None if text_features is None else text_features.to(dtype)
    out = model(x, sigma, context=context)
    return -comfy_latent_to_tokens(out.to(torch.float32))
