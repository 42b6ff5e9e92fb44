"""Ulysses sequence parallelism: each rank of a group holds a contiguous chunk of the tokens.

A sequence-parallel group of ``N`` ranks shares one video: rank ``r`` holds tokens
``[r S/N, (r + 1) S/N)`` of the flattened latent grid (raster order). Everything in a Wan block
except self-attention works per token (projections, norms, FFN, cross-attention to the replicated
text), so it runs on the local tokens. Self-attention needs every token: an all-to-all trades the
token split for a head split (``[B, S/N, H, D]`` -> ``[B, S, H/N, D]``), attention runs on full
sequences for ``H/N`` heads, and the reverse all-to-all restores the token split. VMoBA stays exact
when its selection pools stay inside one head
(:data:`vmoba.attention.selection.HEAD_LOCAL_SCOPES`).

Gradients: the backward of every collective here is its exact adjoint (all-to-all -> the reverse
all-to-all; all-gather -> reduce-scatter of the sum). So one rank's backward gives the gradient of
the sum of its group's ``N`` (identical) losses with respect to the work that rank did, and DDP's
average over all ``N * D`` ranks is the gradient of the mean loss over the ``D`` data-parallel
replicas: no loss scaling and no special gradient hook.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from vmoba.attention.selection import HEAD_LOCAL_SCOPES


def check_exact_scope(scope: str) -> None:
    """Raise unless selection with ``scope`` is unchanged when heads are split over ranks."""
    if scope not in HEAD_LOCAL_SCOPES:
        raise ValueError(
            f"scope must be one of {HEAD_LOCAL_SCOPES} under sequence parallelism (Ulysses "
            f"splits heads over ranks and {scope!r} pools gates across heads), got {scope!r}"
        )


def _all_to_all(
    x: torch.Tensor, group: ProcessGroup, scatter_dim: int, gather_dim: int
) -> torch.Tensor:
    """Split ``x`` along ``scatter_dim`` into one chunk per rank, send chunk ``i`` to rank ``i``,
    and concatenate the chunks received along ``gather_dim`` in rank order (non-negative dims)."""
    n = dist.get_world_size(group)
    send = x.unflatten(scatter_dim, (n, -1)).movedim(scatter_dim, 0).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return received.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.group, gather_dim, scatter_dim), None, None, None


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        chunks = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(chunks, x.contiguous(), group=group)
        return torch.cat(chunks, dim)

    @staticmethod
    def backward(ctx, grad):
        # Reduce-scatter as an all-to-all and a local sum: the same traffic, through the one
        # collective that gloo, NCCL and every torch version here name alike.
        chunks = _all_to_all(grad, ctx.group, ctx.dim, 0)  # [N * ..., ...] from every rank
        summed = chunks.unflatten(0, (dist.get_world_size(ctx.group), -1)).sum(0)
        return summed, None, None


def _check_divisible(size: int, group: ProcessGroup, what: str) -> None:
    n = dist.get_world_size(group)
    if size % n:
        raise ValueError(f"{what} ({size}) must be divisible by the sequence-parallel size ({n})")


def shard_sequence(x: torch.Tensor, group: ProcessGroup, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim`` (``x`` is the same on every rank).

    Videos whose token count is not divisible by the group size are rejected, not padded: padding
    tokens would enter VMoBA's block partition and change the selection.
    """
    _check_divisible(x.shape[dim], group, "the number of tokens")
    return x.chunk(dist.get_world_size(group), dim)[dist.get_rank(group)]


def gather_sequence(x: torch.Tensor, group: ProcessGroup, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's chunk along ``dim`` (differentiable; inverse of
    :func:`shard_sequence`)."""
    return _GatherSequence.apply(x, group, dim)


def sequence_to_heads(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``[B, S/N, H, ...]`` -> ``[B, S, H/N, ...]``; rank ``r`` gets heads ``[r H/N, (r + 1) H/N)``
    of every token."""
    _check_divisible(x.shape[2], group, "the number of attention heads")
    return _AllToAll.apply(x, group, 2, 1)


def heads_to_sequence(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``[B, S, H/N, ...]`` -> ``[B, S/N, H, ...]``, the inverse of :func:`sequence_to_heads`."""
    return _AllToAll.apply(x, group, 1, 2)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    group: ProcessGroup,
) -> torch.Tensor:
    """``attend`` over the whole sequence from token-split inputs.

    Args:
        q, k, v: ``[B, S/N, H, D]``, this rank's tokens (RoPE applied).
        attend: attention over full sequences, ``[B, S, h, D]`` x 3 -> ``[B, S, h, D]`` for any
            number of heads ``h`` (here ``H/N``).
        group: the sequence-parallel group (``N`` ranks; ``H`` must be divisible by ``N``).

    Returns:
        ``[B, S/N, H, D]``: this rank's tokens of ``attend(q, k, v)`` on the full sequence.
    """
    qkv = sequence_to_heads(torch.stack([q, k, v], dim=3), group)  # [B, S, H/N, 3, D]: one call
    return heads_to_sequence(attend(*qkv.unbind(3)), group)
