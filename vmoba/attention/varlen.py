"""VMoBA on variable-length FlashAttention kernels (CUDA): one segment per (sample, head, block).

The queries that kept key block ``j`` (of one sample and head) are gathered into one packed
segment that attends densely to block ``j``'s keys; varlen kernel calls run the segments. Each
segment returns its output and log-sum-exp; the outputs of one query across its kept blocks
merge exactly by their log-sum-exps. The backward pass calls the varlen backward kernel with the
*merged* output and log-sum-exp gathered per segment: the kernel then recomputes the globally
normalised probabilities of each segment's keys, so the per-segment gradients are exact and only
need summing (dq) or are already disjoint (dk, dv: each key is in one block).

Memory: a query is copied once per kept block, so the packed rows outnumber the tokens by the
mean number of kept blocks (10-15 for 2D/3D layers). Segments therefore run in consecutive
chunks of at most :data:`ROW_BUDGET` packed rows, whose results fold into float32 running
outputs; the backward re-gathers each chunk's rows instead of keeping them. Queries and keys are
gathered straight from the ``[B, S, H, D]`` inputs by row index.

Kernels: :mod:`vmoba.attention.fa2_varlen` (flash-attn when installed, else PyTorch's own FA2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from vmoba.attention.fa2_varlen import varlen_kernels
from vmoba.attention.gates import upcast_dtype
from vmoba.attention.partition import BlockPartition
from vmoba.attention.segment_merge import merge_by_lse_into, rows_by_destination, sum_into

ROW_BUDGET = 1 << 19
"""Packed query rows plus key rows per kernel call. The backward of a chunk holds about
``12 * D`` bytes per query row (re-gathered q, grad and output, FA2's float32 dq accumulator, dq)
and ``8 * D`` per key row (gathered k and v, dk, dv): at most 0.75 GiB at D = 128. Keys count
because 1D layers' large blocks put ~300K key rows in a chunk of 2^19 query rows (1.31 GiB extra
at 55K, session 3). Smaller budgets save memory but cut the backward kernel's parallelism."""


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
    chunks: runs of segments of at most ``ROW_BUDGET`` query plus key rows (a longer segment runs
        alone).
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
            budget: int):
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


PLAN_ENTRIES = 1 << 28
"""Keep-mask entries whose packed rows :func:`plan_segments` finds at once. The search's int64
temporaries take ~16 bytes per kept entry, and kept entries grow as ``S^2`` with blocks of a
fixed size (1.1e9 for a 3D layer at 589,824 tokens); in groups of (sample, head) pairs they stay
bounded, and only the plan's own ``rows`` is as large."""


def plan_segments(keep: torch.Tensor, partition: BlockPartition, budget: int) -> SegmentPlan:
    """Segments of ``keep`` ``[B, H, S, N]``; syncs with the host to size the packed rows."""
    batch, heads, tokens, blocks = keep.shape
    by_pair = keep.reshape(batch * heads, tokens, blocks)
    step = max(1, PLAN_ENTRIES // (tokens * blocks))
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
    chunks = _chunks(sizes, starts, cu_k, blocks, tokens, budget)
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


def _offsets(cu: torch.Tensor, chunk: Chunk, first: int) -> torch.Tensor:
    return cu[chunk.seg0 : chunk.seg1 + 1] - first


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


class _VarlenVMoBA(torch.autograd.Function):
    """q, k, v ``[B, S, H, D]`` (fp16/bf16) -> out, contiguous ``[B, S, H, D]``.

    Each chunk gathers its query and key rows by index, so no full reordered copy of q, k or v
    is made or kept for the backward. The running outputs and dq accumulate head-major (each
    chunk's destinations are one slice); the output and grad_q leave token-major, so the caller's
    head merge and the incoming gradient need no copy."""

    @staticmethod
    def forward(ctx, q, k, v, plan: SegmentPlan, perm: torch.Tensor):
        batch, _, heads, dim = q.shape
        q_rows, k_rows = row_indices(batch, heads, perm)
        kernels, scale = varlen_kernels(), dim**-0.5
        acc_dtype = upcast_dtype(q.dtype)
        out = torch.zeros(q_rows.numel(), dim, dtype=acc_dtype, device=q.device)
        lse = torch.full(q_rows.shape, float("-inf"), dtype=acc_dtype, device=q.device)
        q2d, k2d, v2d = (x.reshape(-1, dim) for x in (q, k, v))  # [B*S*H, D] views
        orders = destination_orders(plan.rows, plan.chunks)
        for c, csr in chunk_orders(plan.chunks, *orders):
            rows = plan.rows[c.row0 : c.row1]
            keys = k_rows[c.key0 : c.key1]
            part, part_lse = kernels.forward(
                q2d[q_rows[rows]].unsqueeze(1),
                k2d[keys].unsqueeze(1),
                v2d[keys].unsqueeze(1),
                _offsets(plan.cu_q, c, c.row0),
                _offsets(plan.cu_k, c, c.key0),
                c.max_q,
                plan.max_k,
                scale,
            )
            merge_by_lse_into(
                out[c.dst0 : c.dst1], lse[c.dst0 : c.dst1], part.squeeze(1), part_lse.view(-1),
                destinations(plan.rows, c), csr,
            )
        out = token_major(out, batch, heads, q.dtype)
        ctx.save_for_backward(
            q, k, v, out, lse, plan.rows, plan.cu_q, plan.cu_k, q_rows, k_rows, *orders
        )
        ctx.chunks, ctx.max_k, ctx.scale = plan.chunks, plan.max_k, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, all_rows, cu_q, cu_k, q_rows, k_rows, *orders = ctx.saved_tensors
        batch, _, heads, dim = q.shape
        kernels = varlen_kernels()
        q2d, k2d, v2d, out2d, grad2d = (x.reshape(-1, dim) for x in (q, k, v, out, grad_out))
        grad_q = torch.zeros(q_rows.numel(), dim, dtype=upcast_dtype(q.dtype), device=q.device)
        grad_k, grad_v = torch.empty_like(k2d), torch.empty_like(v2d)  # every key is in one chunk
        for c, csr in chunk_orders(ctx.chunks, *orders):
            rows = all_rows[c.row0 : c.row1]
            tokens_of_rows = q_rows[rows]
            keys = k_rows[c.key0 : c.key1]
            dq, dk, dv = kernels.backward(
                grad2d[tokens_of_rows].unsqueeze(1),
                q2d[tokens_of_rows].unsqueeze(1),
                k2d[keys].unsqueeze(1),
                v2d[keys].unsqueeze(1),
                out2d[tokens_of_rows].unsqueeze(1),
                lse[rows].unsqueeze(0),
                _offsets(cu_q, c, c.row0),
                _offsets(cu_k, c, c.key0),
                c.max_q,
                ctx.max_k,
                ctx.scale,
            )
            sum_into(grad_q[c.dst0 : c.dst1], dq.squeeze(1), destinations(all_rows, c), csr)
            grad_k.index_copy_(0, keys, dk.squeeze(1))
            grad_v.index_copy_(0, keys, dv.squeeze(1))
        grad_q = token_major(grad_q, batch, heads, q.dtype)
        return grad_q, grad_k.view_as(k), grad_v.view_as(v), None, None


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    partition: BlockPartition,
) -> torch.Tensor:
    """VMoBA attention on FlashAttention-2 varlen kernels. Arguments, shapes and result as
    :func:`vmoba.attention.reference.reference_attention`, for float16/bfloat16 CUDA tensors with
    head dim ``D`` a multiple of 8 up to 256."""
    plan = plan_segments(keep, partition, ROW_BUDGET)
    return _VarlenVMoBA.apply(q, k, v, plan, partition.on(q.device).perm)
