"""VMoBA on variable-length FlashAttention kernels (CUDA): one segment per (sample, head, block).

The queries that kept key block ``j`` (of one sample and head) are gathered into one packed
segment that attends densely to block ``j``'s keys; one varlen kernel call runs every segment.
Each segment returns its output and log-sum-exp; the outputs of one query across its kept blocks
merge exactly by their log-sum-exps. The backward pass calls the varlen backward kernel with the
*merged* output and log-sum-exp gathered per segment: the kernel then recomputes the globally
normalised probabilities of each segment's keys, so the per-segment gradients are exact and only
need summing (dq) or are already disjoint (dk, dv: each key is in one block).

Kernels: PyTorch's own FlashAttention-2 varlen ops (``aten._flash_attention_forward/backward``),
present in every CUDA build; no flash-attn package needed. (cuDNN's varlen path, tried on the
H200 with torch 2.11 / cuDNN 9.19, gave wrong outputs for this packing and ran 2-4x slower.)
"""

from __future__ import annotations

import torch

from vmoba.attention.partition import BlockPartition
from vmoba.attention.segment_merge import merge_by_lse, rows_by_destination, sum_by_destination


def _segments(keep: torch.Tensor, partition: BlockPartition):
    """Packing plan of every (b, h, j) segment.

    Returns:
        rows: ``[total_q]`` int64, the query of each packed row as an index into ``[B * H * S]``
            (raster token order), segments in (b, h, j) order, queries ascending.
        cu_q, cu_k: ``[B * H * N + 1]`` int32 offsets of each segment's queries in the packed
            queries and of its keys in the ``[B * H * S]`` block-ordered keys.
        max_q, max_k: longest segment (host ints; the kernels need them).
    """
    batch, heads, tokens, blocks = keep.shape
    device = keep.device
    by_block = keep.permute(0, 1, 3, 2).reshape(-1, tokens)  # [B*H*N, S]
    seg, query = by_block.nonzero(as_tuple=True)
    rows = (seg // blocks) * tokens + query
    counts = by_block.sum(-1)
    cu_q = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=device)
    cu_q[1:] = torch.cumsum(counts, 0)
    offsets = partition.block_offsets.to(device)
    head_starts = torch.arange(batch * heads, device=device).repeat_interleave(blocks) * tokens
    cu_k = torch.empty_like(cu_q)
    cu_k[:-1] = head_starts + offsets[:-1].repeat(batch * heads)
    cu_k[-1] = batch * heads * tokens
    max_q = int(counts.max())
    max_k = int(partition.block_sizes.max())
    return rows, cu_q, cu_k, max_q, max_k


class _VarlenVMoBA(torch.autograd.Function):
    """q ``[B*H*S, D]`` raster order, k, v ``[B*H*S, D]`` block order (fp16/bf16)."""

    @staticmethod
    def forward(ctx, q, k, v, rows, cu_q, cu_k, max_q, max_k):
        scale = q.shape[-1] ** -0.5
        q_packed = q[rows].unsqueeze(1)  # [total_q, 1, D]
        out, lse, seed, offset, _ = torch.ops.aten._flash_attention_forward(
            q_packed,
            k.unsqueeze(1),
            v.unsqueeze(1),
            cu_q,
            cu_k,
            max_q,
            max_k,
            0.0,
            False,
            False,
            scale=scale,
        )
        order, starts = rows_by_destination(rows, q.shape[0])
        merged, merged_lse = merge_by_lse(out.squeeze(1), lse.reshape(-1), rows, order, starts)
        ctx.save_for_backward(
            q_packed, k, v, rows, order, starts, cu_q, cu_k, merged, merged_lse, seed, offset
        )
        ctx.max_q, ctx.max_k, ctx.scale = max_q, max_k, scale
        return merged

    @staticmethod
    def backward(ctx, grad_out):
        q_packed, k, v, rows, order, starts, cu_q, cu_k, merged, merged_lse, seed, offset = (
            ctx.saved_tensors
        )
        grad_q, grad_k, grad_v = torch.ops.aten._flash_attention_backward(
            grad_out[rows].unsqueeze(1).contiguous(),
            q_packed,
            k.unsqueeze(1),
            v.unsqueeze(1),
            merged[rows].unsqueeze(1),
            merged_lse[rows].unsqueeze(0).contiguous(),
            cu_q,
            cu_k,
            ctx.max_q,
            ctx.max_k,
            0.0,
            False,
            seed,
            offset,
            scale=ctx.scale,
        )
        grad_q = sum_by_destination(grad_q.squeeze(1), rows, order, starts)
        return grad_q, grad_k.squeeze(1), grad_v.squeeze(1), *[None] * 5


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
    rows, cu_q, cu_k, max_q, max_k = _segments(keep, partition)
    perm = partition.perm.to(q.device)
    flat = lambda x: x.transpose(1, 2).reshape(-1, dim)  # noqa: E731  [B*H*S, D]
    out = _VarlenVMoBA.apply(
        flat(q), flat(k[:, perm]), flat(v[:, perm]), rows, cu_q, cu_k, max_q, max_k
    )
    return out.view(batch, heads, tokens, dim).transpose(1, 2)
