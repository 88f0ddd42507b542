"""Running a block de-quantiser over all blocks of a weight: one pass on accelerators, in chunks on CPUs.

On the CPU a large temporary costs a page fault per page (the C allocator hands buffers of more than a few MiB
back to the system when freed and maps fresh ones next time), which takes longer than the arithmetic of
de-quantising. Chunks of a few MiB are reused from the allocator's heap instead, and only the output is allocated
whole. Accelerators' caching allocators make one pass over all blocks the fastest there.
"""

from __future__ import annotations

from typing import Callable

import torch

# Weights de-quantised per chunk on the CPU: 4 MiB of float32 temporaries, which glibc's allocator keeps in its
# heap (its threshold for mapping fresh pages rises to 32 MiB), and few enough chunks that per-operation overhead
# stays small (measured with benchmarks/dequant_speed.py: 1 << 16 was 2-3x slower, a single pass 4x slower).
CPU_CHUNK_ELEMENTS = 1 << 20


def dequantize_blockwise(
    blocks: torch.Tensor,
    elements_per_block: int,
    dtype: torch.dtype,
    dequantize_blocks: Callable[[torch.Tensor], torch.Tensor],
    *block_data: torch.Tensor,
) -> torch.Tensor:
    """``dequantize_blocks(blocks[i:j], *(d[i:j] for d in block_data))`` over all blocks, rounded to ``dtype``.

    blocks: (n_blocks, ...) per-block data; block_data: more tensors with one row per block (e.g. scales).
    dequantize_blocks returns (rows, elements_per_block) float32. Returns (n_blocks, elements_per_block) ``dtype``.
    """
    n_blocks = blocks.shape[0]
    step = max(1, CPU_CHUNK_ELEMENTS // elements_per_block)
    if blocks.device.type != "cpu" or n_blocks <= step:
        return dequantize_blocks(blocks, *block_data).to(dtype)
    out = torch.empty((n_blocks, elements_per_block), dtype=dtype)
    for start in range(0, n_blocks, step):
        chunk = slice(start, start + step)
        out[chunk] = dequantize_blocks(blocks[chunk], *(data[chunk] for data in block_data))
    return out
