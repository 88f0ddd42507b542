"""Speed levers for the pack's DiT, prototyped OUTSIDE ``ideogram4/`` so they can be measured before anyone
decides to adopt them. Each lever patches a built :class:`ideogram4.dit.Ideogram4DiT` instance (never the class,
never the files) inside a context manager that restores it.

A variant is a ``+``-joined list of levers after the implementation name, e.g. ``pack+sdpa=cudnn+compile``:

    sdpa=flash|cudnn|efficient|math   force one SDPA backend (``torch.nn.attention.sdpa_kernel``)
    normrope                          q/k RMSNorm + RoPE as one compiled function per tensor (torch.compile)
    compile                           torch.compile of every TransformerBlock (shared code, one graph per shape)
    fastcasts                         with normrope/compile: let Inductor keep float32 intermediates inside its
                                      fused kernels; by default ``emulate_precision_casts`` rounds them to bf16
                                      where eager does, so the compiled code reproduces the eager bits
    rmsnorm=manual                    RMSNorm as float32 arithmetic instead of F.rms_norm (the slower reference
                                      style of diffusers; measures what the fused F.rms_norm is worth)
    streams                           conditional and unconditional forwards on two CUDA streams at once
    graphs                            the whole step (cond + uncond) captured once as a CUDA graph and replayed

Levers change how the maths is scheduled, not the maths: the benchmark reports each variant's relative error
against the plain pack.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ideogram4.dit import Attention, TransformerBlock
from ideogram4.rope import rotate_half

SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}
FLAGS = ("normrope", "compile", "fastcasts", "streams", "graphs")
COMPILED = ("normrope", "compile")


@dataclass(frozen=True)
class Levers:
    sdpa: str | None = None
    rmsnorm: str = "fused"
    flags: frozenset = field(default_factory=frozenset)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def compiled(self) -> bool:
        return any(flag in self.flags for flag in COMPILED)


def parse_levers(spec: str) -> Levers:
    """``"sdpa=cudnn+compile"`` -> Levers. Empty or ``"default"`` -> no lever."""
    sdpa, rmsnorm, flags = None, "fused", set()
    for part in filter(None, spec.split("+")):
        if part == "default":
            continue
        name, _, value = part.partition("=")
        if name == "sdpa" and value in SDPA_BACKENDS:
            sdpa = value
        elif name == "rmsnorm" and value in ("fused", "manual"):
            rmsnorm = value
        elif part in FLAGS:
            flags.add(part)
        else:
            raise ValueError(
                f"unknown pack lever {part!r} in {spec!r}; known: sdpa={'|'.join(SDPA_BACKENDS)}, "
                f"rmsnorm=fused|manual, {', '.join(FLAGS)}.")
    return Levers(sdpa, rmsnorm, frozenset(flags))


def _manual_rms_norm(module: torch.nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    # Reference-style RMSNorm: statistics and scaling in float32, one rounding at the end.
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    normed = x.to(torch.float32) * torch.rsqrt(variance + module.eps)
    return (normed * module.weight.to(torch.float32)).to(x.dtype)


def _norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor):
    """F.rms_norm then rotate-half RoPE, each step rounded to x's dtype like the eager pack."""
    normed = F.rms_norm(x, (x.shape[-1],), weight, eps)
    return normed * cos + rotate_half(normed) * sin


@functools.lru_cache(maxsize=None)
def _compiled(function: Callable) -> Callable:
    return torch.compile(function, dynamic=False)


def reset_compiled() -> None:
    """Forget every compiled graph (dynamo's caches and ours)."""
    _compiled.cache_clear()
    torch._dynamo.reset()


def _attention_with_fused_norm_rope(attention: Attention, x, cos, sin, attention_mask):
    """Attention.forward with q/k norm + RoPE as one compiled kernel each (same maths as the pack)."""
    batch, length, hidden = x.shape
    q, k, v = attention.qkv(x).view(batch, length, 3, attention.num_heads, attention.head_dim).unbind(dim=2)
    norm_rope = _compiled(_norm_rope)
    q = norm_rope(q, attention.norm_q.weight, attention.norm_q.eps, cos, sin)
    k = norm_rope(k, attention.norm_k.weight, attention.norm_k.eps, cos, sin)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attention_mask)
    return attention.o(out.transpose(1, 2).reshape(batch, length, hidden))


@contextlib.contextmanager
def _patched(obj, name: str, value):
    had = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def applied(models, levers: Levers):
    """Patch every model in ``models`` (the pack's cond and uncond DiTs) with the module-level levers."""
    with contextlib.ExitStack() as stack:
        for model in models:
            for module in model.modules():
                if levers.rmsnorm == "manual" and isinstance(module, torch.nn.RMSNorm):
                    stack.enter_context(_patched(module, "forward", functools.partial(_manual_rms_norm, module)))
                if levers.has("normrope") and isinstance(module, Attention):
                    stack.enter_context(_patched(
                        module, "forward", functools.partial(_attention_with_fused_norm_rope, module)))
                if levers.has("compile") and isinstance(module, TransformerBlock):
                    # One compiled function for all blocks: parameters are graph inputs, so the 34 blocks share
                    # the code (one compilation per sequence length).
                    compiled_forward = _compiled(type(module).forward)
                    stack.enter_context(_patched(module, "forward", functools.partial(compiled_forward, module)))
        if levers.compiled:
            from torch._inductor import config as inductor_config

            stack.enter_context(inductor_config.patch(emulate_precision_casts=not levers.has("fastcasts")))
        if levers.sdpa is not None:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[levers.sdpa])]))
        yield


def make_step(cond: Callable[[], torch.Tensor], uncond: Callable[[], torch.Tensor], levers: Levers,
              device: torch.device) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The step function (cond + uncond) with the scheduling levers (streams, graphs) applied."""
    if (levers.has("streams") or levers.has("graphs")) and device.type != "cuda":
        raise ValueError("the 'streams' and 'graphs' levers need a CUDA device.")

    def sequential():
        return cond(), uncond()

    step = sequential
    if levers.has("streams"):
        side = torch.cuda.Stream(device)

        def concurrent():
            main = torch.cuda.current_stream(device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                v_uncond = uncond()
            v_cond = cond()
            main.wait_stream(side)
            v_uncond.record_stream(main)
            return v_cond, v_uncond

        step = concurrent
    if levers.has("graphs"):
        step = _graphed(step, device)
    return step


def _graphed(step: Callable, device: torch.device) -> Callable:
    """Capture ``step`` (whose inputs are fixed tensors) once as a CUDA graph; replays return the same outputs."""
    warm = torch.cuda.Stream(device)
    warm.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(warm):
        for _ in range(2):  # lazy initialisation (cuBLAS handles, RoPE tables) must happen outside the capture
            step()
    torch.cuda.current_stream(device).wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()

    def replay():
        graph.replay()
        return outputs

    replay.graph = graph  # keep the graph (and its memory pool) alive with the function
    return replay
