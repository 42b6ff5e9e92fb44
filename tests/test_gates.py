import pytest
import torch
from helpers import random_qkv
from naive_vmoba import naive_blocks, naive_gates

from vmoba.attention import block_gates, block_partition


@pytest.mark.parametrize("block", [2, (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_gates_match_naive(block, dtype):
    grid = (5, 7, 6)
    q, k, _ = random_qkv(2, 210, 3, 16, dtype=dtype, seed=3)
    gates = block_gates(q, k, block_partition(grid, block))
    expected = naive_gates(q, k, naive_blocks(grid, block))
    assert gates.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert not gates.requires_grad  # the gate only decides the mask
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(gates.double(), expected, rtol=tol, atol=tol)
