"""Every backend equals dense attention under the spec's selection, forward and backward."""

import zlib

import pytest
import torch
from helpers import random_qkv, rel_error
from naive_vmoba import (
    dense_masked_attention,
    expand_keep,
    naive_block_of,
    naive_blocks,
    naive_gates,
    naive_keep,
)

from vmoba.attention import VMoBAConfig, block_gates, block_partition, vmoba_attention

MODES = [
    ("topk", "query_head", None, 2),
    ("topk", "head_global", None, 2),
    ("topk", "overall", None, 2),
    ("threshold", "query_head", 0.25, None),
    ("threshold", "head_global", 0.25, None),
    ("threshold", "block", 0.25, None),
    ("threshold", "overall", 0.25, None),
]
GRIDS = {"even": (6, 6, 8), "ragged": (5, 7, 6)}
BLOCKS = {"1d": 2, "2d": (3, 4), "3d": (2, 3, 4)}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
BACKENDS = ("reference", "gathered")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "batch,heads,dim", [(b, h, d) for b in (1, 2) for h in (1, 3) for d in (16, 64)]
)
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("grid_name", GRIDS)
@pytest.mark.parametrize("select,scope,threshold,topk", MODES)
def test_backends_equal_masked_dense_attention(
    select, scope, threshold, topk, grid_name, kind, batch, heads, dim, dtype
):
    grid, block = GRIDS[grid_name], BLOCKS[kind]
    tokens = grid[0] * grid[1] * grid[2]
    seed = zlib.crc32(repr((select, scope, grid_name, kind, batch, heads, dim, dtype)).encode())
    q, k, v = random_qkv(batch, tokens, heads, dim, dtype=dtype, seed=seed)
    blocks = naive_blocks(grid, block)
    # fp64 is checked end to end against naive gates; fp32 against the gates the code computes
    # (tested alone in test_gates.py), since float32 rounding could flip a near-tie in ranking.
    gates = (
        naive_gates(q, k, blocks)
        if dtype == torch.float64
        else block_gates(q, k, block_partition(grid, block))
    )
    keep = naive_keep(gates, naive_block_of(blocks), select, scope, threshold or 0.25, topk)
    expected = dense_masked_attention(q, k, v, expand_keep(keep, naive_block_of(blocks)))
    grad_out = torch.randn(
        expected.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)

    for backend in BACKENDS:
        config = VMoBAConfig(select, scope, threshold or 0.25, topk, block=block, backend=backend)
        out = vmoba_attention(q, k, v, grid=grid, config=config)
        assert out.dtype == dtype and out.shape == q.shape
        assert rel_error(out, expected) < TOLERANCE[dtype], backend
        grads = torch.autograd.grad(out, (q, k, v), grad_out.to(dtype))
        for name, grad, want in zip("qkv", grads, expected_grads):
            assert rel_error(grad, want) < TOLERANCE[dtype], (backend, name)
