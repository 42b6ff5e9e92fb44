"""Shared test helpers."""

import torch

from vmoba.attention import vmoba_attention


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


class AttentionLayer(torch.nn.Module):
    """A module whose forward is one ``vmoba_attention`` call with fixed keyword arguments."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v):
        return vmoba_attention(q, k, v, **self.kwargs)
