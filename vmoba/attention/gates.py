"""Block gates: how strongly each query is drawn to each block, per head."""

from __future__ import annotations

import functools

import torch

from vmoba.attention.partition import BlockPartition


def upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: float64 stays float64, every other floating dtype becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def without_autocast(method):
    """Run an ``autograd.Function``'s ``forward`` or ``backward`` with autocast off on its
    tensors' device, so a backend that upcasts (:func:`upcast_dtype`) computes in that precision
    inside a bf16-mixed region too."""

    @functools.wraps(method)
    def run(ctx, *args):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return method(ctx, *args)

    return run


@torch.no_grad()
def block_mean_keys(k: torch.Tensor, partition: BlockPartition) -> torch.Tensor:
    """Mean key of every block: ``k`` ``[B, S, H, D]`` -> ``[B, N, H, D]`` in :func:`upcast_dtype`.

    Each block's tokens are gathered into ``[B, N, W, H, D]`` slots (``W`` the largest block;
    a smaller block's spare slots weigh 0) and summed in a fixed order, so gates and selection are
    bitwise reproducible on the GPU (activation checkpointing recomputes the selection and must
    get the same packing) without an atomic scatter, and at memory speed rather than as an
    ``[N, S]`` float32 matrix product.
    """
    dtype = upcast_dtype(k.dtype)
    part = partition.on(k.device)
    slot = torch.arange(partition.max_block_size, device=k.device)
    first = part.block_offsets[:-1, None]
    inside = slot < part.block_sizes[:, None]  # [N, W]
    members = part.perm[torch.where(inside, first + slot, first)]  # [N, W] tokens (spares: any)
    weight = inside.to(dtype) / part.block_sizes.to(dtype)[:, None]
    return (k[:, members].to(dtype) * weight[:, :, None, None]).sum(2)


@torch.no_grad()
def block_gates(q: torch.Tensor, k: torch.Tensor, partition: BlockPartition) -> torch.Tensor:
    """Gate ``g[b, h, s, j] = q[b, s, h] . mean_k[b, j, h]`` (no 1/sqrt(D) scale, no gradient).

    Args:
        q, k: ``[B, S, H, D]``.
        partition: the layer's block partition of the ``S`` tokens into ``N`` blocks.

    Returns:
        ``[B, H, S, N]`` in float32 (float64 for float64 inputs).
    """
    with torch.autocast(q.device.type, enabled=False):  # in float32 under bf16-mixed too
        mean_k = block_mean_keys(k, partition)
        return torch.einsum("bshd,bnhd->bhsn", q.to(mean_k.dtype), mean_k)
