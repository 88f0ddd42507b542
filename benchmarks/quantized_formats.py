"""What each weight format costs: bytes per DiT, fidelity, and CPU step time of one full-width block.

    python -m benchmarks.quantized_formats --tokens 256 --repeats 3

* **bytes per DiT**: the weight bytes one released DiT (34 blocks) holds in each format, from the shapes of the
  released config and each format's layout (GGUF files: the block Linears in the type, the other matrices BF16, as
  the published files; nf4: every Linear weight, with one float32 absmax per 64 values, as ideogram-4-nf4).
* **fidelity**: a DiT with one block at the released widths (random weights, N(0, 1/fan_in)) stored as the
  official fp8 release stores it (per-row fp8); each other format is made from those de-quantised weights (as the
  published GGUFs were made from the fp8 release), and its velocity is compared with the official fp8 maths:
  relative Frobenius distance.
* **CPU step time**: the same one-block forward, every quantised Linear de-quantised per call (the pack's
  ``default``), float32 compute; median of ``--repeats`` after a warm-up, relative to the fp8 ``default`` row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ideogram4.dit import Ideogram4DiT  # noqa: E402
from ideogram4.dit_checkpoint import expected_dit_shapes  # noqa: E402
from ideogram4.dit_config import DiTConfig  # noqa: E402
from ideogram4.gguf_dequant import _QTYPE_BY_NAME, gguf_block_layout  # noqa: E402
from ideogram4.quantization import QuantizedWeight, dequantize_fp8_rowwise, quantize_fp8_rowwise  # noqa: E402
from ideogram4.velocity import conditional_velocity  # noqa: E402
from tools.make_tiny_weights import module_shapes, random_tensors  # noqa: E402
from tools.quantized_weights import quantize_for_gguf, quantize_nf4  # noqa: E402

FORMATS = ("fp8 (default)", "bf16", "GGUF Q8_0", "GGUF Q4_K", "nf4")


def is_linear_weight(key: str, shape) -> bool:
    return key.endswith(".weight") and len(shape) == 2 and "norm" not in key and key != "embed_image_indicator.weight"


def is_block_linear(key: str, shape) -> bool:
    return key.startswith("layers.") and is_linear_weight(key, shape)


def stored_bytes(key: str, shape, file_format: str) -> float:
    count = 1
    for size in shape:
        count *= size
    if file_format == "bf16" or not is_linear_weight(key, shape):
        return count * (2 if len(shape) == 2 else 4)
    if file_format == "fp8 (default)":
        return count + shape[0] * 4
    if file_format == "nf4":
        return count / 2 + count / 64 * 4 + 64
    if not is_block_linear(key, shape):
        return count * 2
    elements, block_bytes = gguf_block_layout(_QTYPE_BY_NAME[file_format.split()[1]])
    return count / elements * block_bytes


def bytes_per_dit(file_format: str) -> float:
    return sum(stored_bytes(key, shape, file_format) for key, shape in expected_dit_shapes(DiTConfig()).items())


class PerCallLinear(torch.nn.Linear):
    """A Linear that keeps a quantised weight and rebuilds it in the input's dtype at every call (the pack's
    ``default``), with plain tensors instead of ComfyUI's casts."""

    quantized: QuantizedWeight | None = None

    def hold(self, quantized: QuantizedWeight, stored: torch.Tensor, sidecars: dict[str, torch.Tensor]) -> None:
        self.quantized, self.stored, self.sidecars = quantized, stored, sidecars
        del self.weight
        self.register_buffer("weight", None)

    def forward(self, x):
        if self.quantized is None:
            return super().forward(x)
        return F.linear(x, self.quantized.dequantize(self.stored, self.sidecars, x.dtype), self.bias)


OPERATIONS = types.SimpleNamespace(Linear=PerCallLinear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm,
                                   Embedding=torch.nn.Embedding, Conv2d=torch.nn.Conv2d, GroupNorm=torch.nn.GroupNorm)


def fp8_reference_weights(config: DiTConfig, seed: int) -> tuple[dict, dict]:
    """(float32 state dict de-quantised from per-row fp8, the fp8 storage) of one random full-width model."""
    state = random_tensors(module_shapes(Ideogram4DiT, config), torch.Generator().manual_seed(seed))
    fp8 = {}
    for key, value in state.items():
        if is_linear_weight(key, value.shape):
            fp8[key] = quantize_fp8_rowwise(value)
            state[key] = dequantize_fp8_rowwise(*fp8[key], torch.float32)
    return state, fp8


def build(config: DiTConfig, state: dict, fp8: dict, file_format: str) -> Ideogram4DiT:
    dit = Ideogram4DiT(config, operations=OPERATIONS)
    dit.load_state_dict(state, strict=True)
    for key, value in state.items():
        if not is_linear_weight(key, value.shape) or file_format == "bf16":
            continue
        layer = dit.get_submodule(key[: -len(".weight")])
        shape = tuple(value.shape)
        if file_format == "fp8 (default)":
            weight, scale = fp8[key]
            layer.hold(QuantizedWeight("fp8_rowwise", shape), weight, {"weight_scale": scale})
        elif file_format == "nf4":
            packed, absmax = quantize_nf4(value)
            from ideogram4.nf4 import NF4_CODE

            layer.hold(QuantizedWeight("nf4", shape), packed,
                       {"weight_absmax": absmax, "weight_quant_map": torch.tensor(NF4_CODE)})
        elif is_block_linear(key, value.shape):
            name = file_format.split()[1]
            raw = torch.from_numpy(quantize_for_gguf(value, name))
            layer.hold(QuantizedWeight("gguf", shape, qtype=_QTYPE_BY_NAME[name]), raw, {})
        else:
            layer.weight.data = value.to(torch.bfloat16).float()  # the published GGUFs keep these in BF16
    if file_format == "bf16":
        for key, value in state.items():
            if is_linear_weight(key, value.shape):
                dit.get_submodule(key[: -len(".weight")]).weight.data = value.to(torch.bfloat16).float()
    return dit.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="image tokens (16 x 16 = a 256 x 256 image)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width-divisor", type=int, default=1, help="shrink the widths (smoke test)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    released = DiTConfig()
    config = DiTConfig(num_layers=1, num_attention_heads=released.num_attention_heads // args.width_divisor,
                       intermediate_size=released.intermediate_size // args.width_divisor,
                       llm_features_dim=released.llm_features_dim // args.width_divisor)
    state, fp8 = fp8_reference_weights(config, seed=0)
    side = int(args.tokens ** 0.5)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn((1, side * side, config.in_channels), generator=generator)
    text = torch.randn((1, args.text_tokens, config.llm_features_dim), generator=generator)

    def run(dit):
        return conditional_velocity(dit, tokens, 0.5, text, None, side, side, dtype=torch.float32)

    rows = []
    reference = None
    for file_format in FORMATS:
        dit = build(config, state, fp8, file_format)
        velocity = run(dit)
        reference = velocity if reference is None else reference
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run(dit)
            seconds.append(time.perf_counter() - started)
        error = ((velocity - reference).norm() / reference.norm()).item()
        rows.append((file_format, bytes_per_dit(file_format) / 1e9, error, statistics.median(seconds)))
        print(rows[-1], flush=True)
        del dit
    base = rows[0][3]
    print(f"\nOne DiT at the released widths; one full-width random block, {side}x{side} image tokens + "
          f"{args.text_tokens} text tokens, float32 on the CPU")
    print(f"{'format':<16}{'GB per DiT':>12}{'velocity error vs official fp8':>34}{'CPU block time':>16}")
    for file_format, gigabytes, error, seconds in rows:
        print(f"{file_format:<16}{gigabytes:>12.2f}{error:>34.2e}{seconds / base:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
