"""The segment plan shared by the ``varlen`` and ``indexed`` backends: one segment per
(sample, head, key block), holding the queries of that sample and head that kept the block.

A query is packed once per kept block, so the packed rows outnumber the tokens by the mean number
of kept blocks. The plan lists every segment's packed rows and key range and cuts the segments
into consecutive chunks of a bounded number of rows; each backend runs its kernels chunk by
chunk and folds the partial results onto each query's destination row (:mod:`segment_merge`).
All indices are head-major: a query or key of sample ``b``, head ``h`` and token ``s`` is row
``(b * H + h) * S + s``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from vmoba.attention.partition import BlockPartition
from vmoba.attention.segment_merge import rows_by_destination


@dataclass(frozen=True)
class Chunk:
    """Consecutive segments ``[seg0, seg1)``: their packed rows ``[row0, row1)``, keys
    ``[key0, key1)`` and the destination rows ``[dst0, dst1)`` their queries fall in."""

    seg0: int
    seg1: int
    row0: int
    row1: int
    key0: int
    key1: int
    dst0: int
    dst1: int
    max_q: int


@dataclass(frozen=True)
class SegmentPlan:
    """Packing plan of every (b, h, j) segment, segments in (b, h, j) order.

    rows: ``[total_q]`` int64, the query of each packed row as an index into ``[B * H * S]``
        (raster token order), queries ascending within a segment.
    cu_q, cu_k: ``[B * H * N + 1]`` int32 offsets of each segment's queries in the packed rows and
        of its keys in the ``[B * H * S]`` block-ordered keys.
    chunks: runs of segments of at most ``row_budget`` query plus key rows (a longer segment
        runs alone).
    max_k: the largest block (host int; the kernels need it).
    counts: ``[B * H * N]`` int64 on the CPU, the queries of each segment.
    """

    rows: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    chunks: tuple[Chunk, ...]
    max_k: int
    counts: torch.Tensor


def _chunks(counts: list[int], cu_q: list[int], cu_k: list[int], blocks: int, tokens: int,
            budget: int) -> tuple[Chunk, ...]:
    bounds, start = [], 0
    for seg in range(1, len(counts)):
        if cu_q[seg + 1] - cu_q[start] + cu_k[seg + 1] - cu_k[start] > budget:
            bounds.append((start, seg))
            start = seg
    bounds.append((start, len(counts)))
    return tuple(
        Chunk(s0, s1, cu_q[s0], cu_q[s1], cu_k[s0], cu_k[s1],
               s0 // blocks * tokens, ((s1 - 1) // blocks + 1) * tokens, max(counts[s0:s1]))
        for s0, s1 in bounds
    )


def plan_segments(
    keep: torch.Tensor, partition: BlockPartition, *, row_budget: int, plan_entries: int
) -> SegmentPlan:
    """Segments of ``keep`` ``[B, H, S, N]``; syncs with the host to size the packed rows.

    Args:
        keep: the block keep mask of ``partition``'s ``N`` blocks.
        row_budget: query plus key rows per chunk (``Tuning.row_budget``).
        plan_entries: keep entries searched for packed rows at once, in whole (sample, head)
            pairs (``Tuning.plan_entries``).
    """
    batch, heads, tokens, blocks = keep.shape
    by_pair = keep.reshape(batch * heads, tokens, blocks)
    step = max(1, plan_entries // (tokens * blocks))
    groups = [(p0, min(p0 + step, batch * heads)) for p0 in range(0, batch * heads, step)]
    # [B*H*N] queries per segment, segments in (b, h, j) order
    counts = torch.cat([by_pair[p0:p1].sum(1).flatten() for p0, p1 in groups])
    cu_q = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=keep.device)
    cu_q[1:] = torch.cumsum(counts, 0)
    counts = counts.cpu()
    sizes = counts.tolist()
    starts = [0, *itertools.accumulate(sizes)]  # cu_q on the host
    rows = torch.empty(starts[-1], dtype=torch.int64, device=keep.device)
    for p0, p1 in groups:
        pair, _, query = by_pair[p0:p1].transpose(1, 2).nonzero(as_tuple=True)  # (pair, j, s)
        rows[starts[p0 * blocks] : starts[p1 * blocks]] = (pair + p0) * tokens + query
    offsets = partition.block_offsets.tolist()
    cu_k = [g * tokens + o for g in range(batch * heads) for o in offsets[:-1]]
    cu_k.append(batch * heads * tokens)
    chunks = _chunks(sizes, starts, cu_k, blocks, tokens, row_budget)
    cu_k_device = torch.tensor(cu_k, dtype=torch.int32).to(keep.device, non_blocking=True)
    return SegmentPlan(rows, cu_q, cu_k_device, chunks, int(partition.block_sizes.max()), counts)


def destinations(rows: torch.Tensor, chunk: Chunk) -> torch.Tensor:
    """The chunk's packed rows (int32 or int64) as int64 destinations in its ``[dst0, dst1)``
    slice of the head-major outputs."""
    return (rows[chunk.row0 : chunk.row1] - chunk.dst0).long()


def destination_orders(
    rows: torch.Tensor, chunks: tuple[Chunk, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every chunk's CSR order of its destinations (:func:`rows_by_destination` of the packed
    ``rows``), sorted once for the forward's merge and the backward's dq sum: ``order``
    ``[total_q]`` int32 (chunk ``c``'s in rows ``[c.row0, c.row1)``) and ``starts`` int32,
    concatenated over the chunks (see :func:`chunk_orders`). Tensors, so autograd saves them
    (and activation checkpointing drops them) like any other."""
    orders, starts = [], []
    for c in chunks:
        order, start = rows_by_destination(destinations(rows, c), c.dst1 - c.dst0)
        orders.append(order.int())
        starts.append(start.int())
    return torch.cat(orders), torch.cat(starts)


def chunk_orders(chunks: tuple[Chunk, ...], order: torch.Tensor, starts: torch.Tensor):
    """Yield each chunk with its slice ``(order, starts)`` of :func:`destination_orders`."""
    first = 0
    for c in chunks:
        yield c, (order[c.row0 : c.row1], starts[first : first + c.dst1 - c.dst0 + 1])
        first += c.dst1 - c.dst0 + 1


def row_indices(batch: int, heads: int, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x.reshape(B * S * H, D)`` for ``x`` ``[B, S, H, D]``: of each query in
    head-major raster order ``(b, h, s)``, and of each key in head-major block order."""
    tokens = perm.numel()
    b = torch.arange(batch, device=perm.device).view(-1, 1, 1) * tokens
    h = torch.arange(heads, device=perm.device).view(1, -1, 1)
    s = torch.arange(tokens, device=perm.device).view(1, 1, -1)
    return ((b + s) * heads + h).flatten(), ((b + perm) * heads + h).flatten()


def token_major(x: torch.Tensor, batch: int, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Head-major rows ``[B * H * S, D]`` -> contiguous ``[B, S, H, D]`` of ``dtype``, one copy."""
    x = x.view(batch, heads, -1, x.shape[-1]).transpose(1, 2)
    return x.to(dtype, memory_format=torch.contiguous_format)
