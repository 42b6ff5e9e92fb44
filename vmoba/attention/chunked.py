"""Memory-safe masked attention: query chunks forward, recomputation backward.

The exact math of :func:`vmoba.attention.reference.reference_attention`, but no tensor is larger
than about ``_CHUNK_ELEMENTS`` scores, in the forward pass or the backward pass: like FlashAttention,
the forward keeps only the output and each row's log-sum-exp, and the backward recomputes each
chunk's probabilities from them. Runs on any device; the default CPU path.
"""

from __future__ import annotations

import torch

from vmoba.attention.gates import upcast_dtype, without_autocast
from vmoba.attention.partition import BlockPartition

_CHUNK_ELEMENTS = 2**24  # scores per chunk: 64 MiB in float32


def _chunk_rows(batch: int, heads: int, tokens: int) -> int:
    return max(1, _CHUNK_ELEMENTS // (batch * heads * tokens))


def _chunk_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    keep: torch.Tensor,
    key_block: torch.Tensor,
    lse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked probabilities ``[B, H, c, S]`` of a chunk of queries and their log-sum-exp ``[B, H, c]``.

    ``lse`` is recomputed when None (forward) and reused when given (backward).
    """
    scores = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    scores.masked_fill_(~keep[..., key_block], float("-inf"))
    if lse is not None:
        return scores.sub_(lse[..., None]).exp_(), lse
    row_max = scores.amax(-1, keepdim=True)  # finite: every query keeps its own block
    row_sum = scores.sub_(row_max).exp_().sum(-1, keepdim=True)
    return scores.div_(row_sum), (row_max + row_sum.log()).squeeze(-1)


class _ChunkedMaskedAttention(torch.autograd.Function):
    """q, k, v ``[B, H, S, D]`` (one float dtype), keep ``[B, H, S, N]``, key_block ``[S]``."""

    @staticmethod
    @without_autocast
    def forward(ctx, q, k, v, keep, key_block):
        batch, heads, tokens, _ = q.shape
        step = _chunk_rows(batch, heads, tokens)
        out = torch.empty_like(q)
        lse = q.new_empty(batch, heads, tokens)
        for start in range(0, tokens, step):
            rows = slice(start, start + step)
            probs, chunk_lse = _chunk_probs(q[:, :, rows], k, keep[:, :, rows], key_block, None)
            lse[:, :, rows] = chunk_lse
            out[:, :, rows] = probs @ v
        ctx.save_for_backward(q, k, v, keep, key_block, out, lse)
        return out

    @staticmethod
    @without_autocast
    def backward(ctx, grad_out):
        q, k, v, keep, key_block, out, lse = ctx.saved_tensors
        batch, heads, tokens, dim = q.shape
        step = _chunk_rows(batch, heads, tokens)
        scale = dim**-0.5
        delta = (grad_out * out).sum(-1)  # [B, H, S]: rowsum(dP * P) of softmax's backward
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        for start in range(0, tokens, step):
            rows = slice(start, start + step)
            probs, _ = _chunk_probs(q[:, :, rows], k, keep[:, :, rows], key_block, lse[:, :, rows])
            grad_v += probs.transpose(-1, -2) @ grad_out[:, :, rows]
            grad_scores = (grad_out[:, :, rows] @ v.transpose(-1, -2)).sub_(delta[:, :, rows, None])
            grad_scores.mul_(probs).mul_(scale)
            grad_q[:, :, rows] = grad_scores @ k
            grad_k += grad_scores.transpose(-1, -2) @ q[:, :, rows]
        return grad_q, grad_k, grad_v, None, None


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    partition: BlockPartition,
) -> torch.Tensor:
    """Masked attention in query chunks. Arguments, shapes and result as
    :func:`vmoba.attention.reference.reference_attention` (float32 math, float64 for float64)."""
    dtype = upcast_dtype(q.dtype)
    qh, kh, vh = (x.transpose(1, 2).to(dtype).contiguous() for x in (q, k, v))  # [B, H, S, D]
    key_block = partition.on(q.device).block_index
    out = _ChunkedMaskedAttention.apply(qh, kh, vh, keep, key_block)
    return out.transpose(1, 2).to(q.dtype)
