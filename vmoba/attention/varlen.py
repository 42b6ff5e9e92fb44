"""VMoBA on variable-length FlashAttention kernels (CUDA): one segment per (sample, head, block).

The queries that kept key block ``j`` (of one sample and head) are gathered into one packed
segment that attends densely to block ``j``'s keys; varlen kernel calls run the segments. Each
segment returns its output and log-sum-exp; the outputs of one query across its kept blocks
merge exactly by their log-sum-exps. The backward pass calls the varlen backward kernel with the
*merged* output and log-sum-exp gathered per segment: the kernel then recomputes the globally
normalised probabilities of each segment's keys, so the per-segment gradients are exact and only
need summing (dq) or are already disjoint (dk, dv: each key is in one block).

Memory: a query is copied once per kept block, so the packed rows outnumber the tokens by the
mean number of kept blocks (10-15 for 2D/3D layers). Segments therefore run in the plan's
chunks (:mod:`vmoba.attention.segments`, at most ``Tuning.row_budget`` packed rows each), whose
results fold into float32 running outputs; the backward re-gathers each chunk's rows instead of
keeping them. Queries and keys are gathered straight from the ``[B, S, H, D]`` inputs by row
index.

Kernels: :mod:`vmoba.attention.fa2_varlen` (flash-attn when installed, else PyTorch's own FA2).
"""

from __future__ import annotations

import torch

from vmoba.attention.fa2_varlen import varlen_kernels
from vmoba.attention.gates import upcast_dtype
from vmoba.attention.partition import BlockPartition
from vmoba.attention.segment_merge import merge_by_lse_into, sum_into
from vmoba.attention.segments import (
    Chunk,
    SegmentPlan,
    chunk_orders,
    destination_orders,
    destinations,
    plan_segments,
    row_indices,
    token_major,
)
from vmoba.attention.tuning import DEFAULT_TUNING, Tuning


def _offsets(cu: torch.Tensor, chunk: Chunk, first: int) -> torch.Tensor:
    """The chunk's segment offsets ``[seg1 - seg0 + 1]``, relative to its first row ``first``."""
    return cu[chunk.seg0 : chunk.seg1 + 1] - first


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
    tuning: Tuning = DEFAULT_TUNING,
) -> torch.Tensor:
    """VMoBA attention on FlashAttention-2 varlen kernels. Arguments, shapes and result as
    :func:`vmoba.attention.reference.reference_attention`, for float16/bfloat16 CUDA tensors with
    head dim ``D`` a multiple of 8 up to 256; ``tuning`` bounds the plan and its chunks."""
    plan = plan_segments(
        keep, partition, row_budget=tuning.row_budget, plan_entries=tuning.plan_entries
    )
    return _VarlenVMoBA.apply(q, k, v, plan, partition.on(q.device).perm)
