"""Block-sparse attention by gathering, in plain PyTorch: work and memory scale with the kept
density, on any device and dtype.

For every (sample, head, key block) the queries that kept that block are gathered and attend to
the block's keys as one small dense matrix product. A first pass gives each query's log-sum-exp
over all its kept blocks; a second pass accumulates the normalised output. The backward pass
recomputes the same products (FlashAttention-style), so nothing of size ``S x S`` is ever held.
The loops and ``nonzero`` calls are host-side work: it suits the CPU, while on a GPU each step
waits for the host, so the kernel backends (``indexed``, ``varlen``) run there where they can.
"""

from __future__ import annotations

from typing import Iterator

import torch

from vmoba.attention.gates import upcast_dtype, without_autocast
from vmoba.attention.partition import BlockPartition


def _pairs(
    keep: torch.Tensor, offsets: list[int]
) -> Iterator[tuple[int, int, int, slice, torch.Tensor]]:
    """``(b, h, block j, its key slice in block order, query ids)`` of every kept (b, h, j)."""
    batch, heads, _, blocks = keep.shape
    for b in range(batch):
        for h in range(heads):
            for j in range(blocks):
                queries = keep[b, h, :, j].nonzero().squeeze(1)
                if queries.numel():
                    yield b, h, j, slice(offsets[j], offsets[j + 1]), queries


class _GatheredAttention(torch.autograd.Function):
    """q ``[B, H, S, D]`` (raster order), k, v ``[B, H, S, D]`` in block order, keep ``[B, H, S, N]``."""

    @staticmethod
    @without_autocast
    def forward(ctx, q, k, v, keep, offsets):
        scale = q.shape[-1] ** -0.5
        block_lse = q.new_full(keep.shape, float("-inf"))  # [B, H, S, N]
        for b, h, j, keys, rows in _pairs(keep, offsets):
            scores = (q[b, h, rows] @ k[b, h, keys].T).mul_(scale)
            block_lse[b, h, rows, j] = torch.logsumexp(scores, -1)
        lse = torch.logsumexp(block_lse, -1)  # [B, H, S]
        out = torch.zeros_like(q)
        for b, h, _, keys, rows in _pairs(keep, offsets):
            scores = (q[b, h, rows] @ k[b, h, keys].T).mul_(scale)
            probs = scores.sub_(lse[b, h, rows, None]).exp_()
            out[b, h].index_add_(0, rows, probs @ v[b, h, keys])
        ctx.save_for_backward(q, k, v, keep, out, lse)
        ctx.offsets = offsets
        return out

    @staticmethod
    @without_autocast
    def backward(ctx, grad_out):
        q, k, v, keep, out, lse = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        delta = (grad_out * out).sum(-1)  # [B, H, S]: rowsum(dP * P) of softmax's backward
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for b, h, _, keys, rows in _pairs(keep, ctx.offsets):
            q_rows, k_block, grad_rows = q[b, h, rows], k[b, h, keys], grad_out[b, h, rows]
            probs = (q_rows @ k_block.T).mul_(scale).sub_(lse[b, h, rows, None]).exp_()
            grad_v[b, h, keys] += probs.T @ grad_rows
            grad_scores = (
                (grad_rows @ v[b, h, keys].T).sub_(delta[b, h, rows, None]).mul_(probs).mul_(scale)
            )
            grad_q[b, h].index_add_(0, rows, grad_scores @ k_block)
            grad_k[b, h, keys] += grad_scores.T @ q_rows
        return grad_q, grad_k, grad_v, None, None


def gathered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    partition: BlockPartition,
) -> torch.Tensor:
    """Masked attention over gathered (query set, key block) pairs. Arguments, shapes and result
    as :func:`vmoba.attention.reference.reference_attention` (float32 math, float64 for float64)."""
    dtype = upcast_dtype(q.dtype)
    perm = partition.on(q.device).perm
    qh = q.transpose(1, 2).to(dtype)  # [B, H, S, D]
    kh, vh = (x[:, perm].transpose(1, 2).to(dtype).contiguous() for x in (k, v))  # block order
    out = _GatheredAttention.apply(qh, kh, vh, keep, partition.block_offsets.tolist())
    return out.transpose(1, 2).to(q.dtype)
