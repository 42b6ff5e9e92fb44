"""The plain reference: dense attention under the selection's mask. Read this first.

VMoBA in five steps (each a small function one import away):

1. ``block_partition(grid, block)``: split the (t, h, w) token grid into 1D/2D/3D blocks.
2. ``block_gates(q, k, partition)``: ``g[b, h, s, j] = q[b, s, h] . mean(k of block j)``.
3. ``select_blocks(gates, partition, config)``: keep each query's own block plus the blocks its
   top-k / threshold rule picks, per sample and head.
4. ``token_mask(keep, partition)``: expand the (query, block) choice to (query, key) pairs.
5. this function: ``softmax(q k^T / sqrt(D))`` over the kept keys only, times ``v``.

Every fast backend must return what this one returns; the tests hold them to it.
"""

from __future__ import annotations

import torch

from vmoba.attention.gates import upcast_dtype
from vmoba.attention.partition import BlockPartition
from vmoba.attention.selection import token_mask


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
