"""Shared test helpers."""

import torch


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()


def random_qkv(batch, tokens, heads, dim, *, dtype=torch.float32, seed=0, grad=True):
    """Fresh seeded random q, k, v ``[B, S, H, D]`` (leaf tensors)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, tokens, heads, dim, generator=gen, dtype=dtype).requires_grad_(grad)
        for _ in range(3)
    )
