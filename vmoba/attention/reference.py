"""The plain reference: the selection rule and dense attention under its mask. Read this first.

VMoBA in five steps (each a small function one import away):

1. ``block_partition(grid, block)``: split the (t, h, w) token grid into 1D/2D/3D blocks.
2. ``block_gates(q, k, partition)``: ``g[b, h, s, j] = q[b, s, h] . mean(k of block j)``.
3. :func:`reference_select_blocks`: keep each query's own block plus the blocks its top-k /
   threshold rule picks, one pool at a time.
4. ``token_mask(keep, partition)``: expand the (query, block) choice to (query, key) pairs.
5. :func:`reference_attention`: ``softmax(q k^T / sqrt(D))`` over the kept keys only, times ``v``.

The fast paths must return what these return: ``selection.select_blocks`` (sorts pools in
batches, or searches for the threshold's cut-off on CUDA) keeps the same blocks, and every
backend computes the same attention; the tests hold them to it.
"""

from __future__ import annotations

import torch

from vmoba.attention.gates import upcast_dtype
from vmoba.attention.partition import BlockPartition
from vmoba.attention.selection import (
    SelectionConfig,
    from_pools,
    self_block_mask,
    to_pools,
    token_mask,
)


def _kept_count(
    pool: torch.Tensor, is_self: torch.Tensor, ranked: torch.Tensor, config: SelectionConfig
) -> int:
    """How many of one pool's other entries the rule keeps, best first.

    Args:
        pool: ``[M]`` float64 gates of the pool's entries.
        is_self: ``[M]`` bool, the entries of each query's own block.
        ranked: the gates of the other entries, best first.
    """
    if config.select == "topk":
        return min(len(ranked), (config.topk - 1) * int(is_self.sum()))
    low, span = pool.min(), pool.max() - pool.min()
    span = span if span > 1e-6 else 1.0  # a flat pool: no normalisation
    normalised = (pool - low) / span
    total = normalised.sum() + 1e-6
    needed = max(0.0, config.threshold - normalised[is_self].sum() / total)
    share = ((ranked - low) / span).cumsum(0) / total  # kept share of the mass, prefix by prefix
    reached = (share >= needed).nonzero()
    return int(reached[0]) + 1 if len(reached) else len(ranked)  # at least one; all if none


@torch.no_grad()
def reference_select_blocks(
    gates: torch.Tensor, partition: BlockPartition, config: SelectionConfig
) -> torch.Tensor:
    """The keep mask of ``config``'s rule (docs/attention.md), one pool at a time in float64.

    Args:
        gates: ``[B, H, S, N]`` block gates.
        partition: the partition the gates were computed for.
        config: the selection rule; its scope says which entries form a pool.

    Returns:
        ``[B, H, S, N]`` bool: self entries, plus each pool's best other entries (ties ranked by
        position).
    """
    is_self = to_pools(self_block_mask(partition, gates.device).expand(gates.shape), config.scope)
    pools = to_pools(gates.double(), config.scope)
    keep = is_self.clone()
    for pool, selfs, kept in zip(pools, is_self, keep):
        others = (~selfs).nonzero().squeeze(1)
        ranked = others[pool[others].argsort(descending=True, stable=True)]
        kept[ranked[: _kept_count(pool, selfs, pool[ranked], config)]] = True
    return from_pools(keep, config.scope, gates.shape)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    partition: BlockPartition,
) -> torch.Tensor:
    """Dense masked attention, computed in float32 (float64 for float64 inputs).

    Args:
        q, k, v: ``[B, S, H, D]``.
        keep: ``[B, H, S, N]`` bool block keep mask (every query keeps its own block).
        partition: the partition of the ``S`` tokens into ``N`` blocks.

    Returns:
        ``[B, S, H, D]`` in the dtype of ``q``. Memory grows as ``B * H * S * S``.
    """
    dtype = upcast_dtype(q.dtype)
    qh, kh, vh = (x.transpose(1, 2).to(dtype) for x in (q, k, v))  # [B, H, S, D]
    scores = (qh @ kh.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, S, S]
    scores = scores.masked_fill(~token_mask(keep, partition), float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(1, 2).to(q.dtype)
