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
outputs; the backward re-gathers each chunk's rows instead of keeping them.

Kernels: :mod:`vmoba.attention.fa2_varlen` (flash-attn when installed, else PyTorch's own FA2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from vmoba.attention.fa2_varlen import varlen_kernels
from vmoba.attention.gates import upcast_dtype
from vmoba.attention.partition import BlockPartition
from vmoba.attention.segment_merge import merge_by_lse_into, sum_into

ROW_BUDGET = 1 << 18
"""Packed query rows per kernel call. The backward of a chunk holds about ``12 * D`` bytes per
row (re-gathered q, grad and output, FA2's float32 dq accumulator, dq): 0.375 GiB at D = 128."""


@dataclass(frozen=True)
class _Chunk:
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
class _Plan:
    """Packing plan of every (b, h, j) segment, segments in (b, h, j) order.

    rows: ``[total_q]`` int64, the query of each packed row as an index into ``[B * H * S]``
        (raster token order), queries ascending within a segment.
    cu_q, cu_k: ``[B * H * N + 1]`` int32 offsets of each segment's queries in the packed rows and
        of its keys in the ``[B * H * S]`` block-ordered keys.
    chunks: runs of segments of at most ``ROW_BUDGET`` rows (a longer segment runs alone).
    max_k: the largest block (host int; the kernels need it).
    """

    rows: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    chunks: tuple[_Chunk, ...]
    max_k: int


def _chunks(counts: list[int], cu_k: list[int], blocks: int, tokens: int, budget: int):
    cu_q = [0, *itertools.accumulate(counts)]
    bounds, start = [], 0
    for seg in range(1, len(counts)):
        if cu_q[seg + 1] - cu_q[start] > budget:
            bounds.append((start, seg))
            start = seg
    bounds.append((start, len(counts)))
    return tuple(
        _Chunk(s0, s1, cu_q[s0], cu_q[s1], cu_k[s0], cu_k[s1],
               s0 // blocks * tokens, ((s1 - 1) // blocks + 1) * tokens, max(counts[s0:s1]))
        for s0, s1 in bounds
    )


def _plan(keep: torch.Tensor, partition: BlockPartition, budget: int) -> _Plan:
    """Segments of ``keep`` ``[B, H, S, N]``; syncs with the host once (the packed row count)."""
    batch, heads, tokens, blocks = keep.shape
    by_block = keep.permute(0, 1, 3, 2).reshape(-1, tokens)  # [B*H*N, S]
    seg, query = by_block.nonzero(as_tuple=True)
    rows = (seg // blocks) * tokens + query
    counts = by_block.sum(-1)
    cu_q = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=keep.device)
    cu_q[1:] = torch.cumsum(counts, 0)
    offsets = partition.block_offsets.tolist()
    cu_k = [g * tokens + o for g in range(batch * heads) for o in offsets[:-1]]
    cu_k.append(batch * heads * tokens)
    chunks = _chunks(counts.tolist(), cu_k, blocks, tokens, budget)
    cu_k_device = torch.tensor(cu_k, dtype=torch.int32).to(keep.device, non_blocking=True)
    return _Plan(rows, cu_q, cu_k_device, chunks, int(partition.block_sizes.max()))


def _offsets(cu: torch.Tensor, chunk: _Chunk, first: int) -> torch.Tensor:
    return cu[chunk.seg0 : chunk.seg1 + 1] - first


class _VarlenVMoBA(torch.autograd.Function):
    """q ``[B*H*S, D]`` raster order, k, v ``[B*H*S, D]`` block order (fp16/bf16)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: _Plan):
        kernels, scale = varlen_kernels(), q.shape[-1] ** -0.5
        acc_dtype = upcast_dtype(q.dtype)
        out = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        lse = torch.full(q.shape[:1], float("-inf"), dtype=acc_dtype, device=q.device)
        for c in plan.chunks:
            rows = plan.rows[c.row0 : c.row1]
            part, part_lse = kernels.forward(
                q[rows].unsqueeze(1),
                k[c.key0 : c.key1].unsqueeze(1),
                v[c.key0 : c.key1].unsqueeze(1),
                _offsets(plan.cu_q, c, c.row0),
                _offsets(plan.cu_k, c, c.key0),
                c.max_q,
                plan.max_k,
                scale,
            )
            merge_by_lse_into(
                out[c.dst0 : c.dst1], lse[c.dst0 : c.dst1], part.squeeze(1), part_lse.view(-1),
                rows - c.dst0,
            )
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, plan.rows, plan.cu_q, plan.cu_k)
        ctx.chunks, ctx.max_k, ctx.scale = plan.chunks, plan.max_k, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, all_rows, cu_q, cu_k = ctx.saved_tensors
        kernels = varlen_kernels()
        grad_q = torch.zeros(q.shape, dtype=upcast_dtype(q.dtype), device=q.device)
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        for c in ctx.chunks:
            rows = all_rows[c.row0 : c.row1]
            dq, dk, dv = kernels.backward(
                grad_out[rows].unsqueeze(1),
                q[rows].unsqueeze(1),
                k[c.key0 : c.key1].unsqueeze(1),
                v[c.key0 : c.key1].unsqueeze(1),
                out[rows].unsqueeze(1),
                lse[rows].unsqueeze(0),
                _offsets(cu_q, c, c.row0),
                _offsets(cu_k, c, c.key0),
                c.max_q,
                ctx.max_k,
                ctx.scale,
            )
            sum_into(grad_q[c.dst0 : c.dst1], dq.squeeze(1), rows - c.dst0)
            grad_k[c.key0 : c.key1] = dk.squeeze(1)
            grad_v[c.key0 : c.key1] = dv.squeeze(1)
        return grad_q.to(q.dtype), grad_k, grad_v, None


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
    batch, tokens, heads, dim = q.shape
    plan = _plan(keep, partition, ROW_BUDGET)
    perm = partition.on(q.device).perm
    flat = lambda x: x.transpose(1, 2).reshape(-1, dim)  # noqa: E731  [B*H*S, D]
    out = _VarlenVMoBA.apply(flat(q), flat(k[:, perm]), flat(v[:, perm]), plan)
    return out.view(batch, heads, tokens, dim).transpose(1, 2)
