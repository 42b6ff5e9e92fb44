"""Straightforward, loop-based VMoBA written for the tests, independent of the code under test."""

from __future__ import annotations

import torch


def naive_blocks(grid, block) -> list[list[int]]:
    """Token ids (raster order) of every block, blocks in raster order of their origins."""
    t_n, h_n, w_n = grid
    if isinstance(block, int):
        ct, ch, cw = block, h_n, w_n
    elif len(block) == 2:
        ct, (ch, cw) = t_n, block
    else:
        ct, ch, cw = block
    blocks = []
    for t0 in range(0, t_n, ct):
        for h0 in range(0, h_n, ch):
            for w0 in range(0, w_n, cw):
                blocks.append(
                    [
                        (t * h_n + h) * w_n + w
                        for t in range(t0, min(t0 + ct, t_n))
                        for h in range(h0, min(h0 + ch, h_n))
                        for w in range(w0, min(w0 + cw, w_n))
                    ]
                )
    return blocks


def naive_block_of(blocks: list[list[int]]) -> list[int]:
    owner = {}
    for j, tokens in enumerate(blocks):
        for s in tokens:
            owner[s] = j
    return [owner[s] for s in range(len(owner))]


def naive_gates(q: torch.Tensor, k: torch.Tensor, blocks: list[list[int]]) -> torch.Tensor:
    """``[B, H, S, N]`` float64 gates: q . mean of the block's keys."""
    batch, tokens, heads, _ = q.shape
    gates = torch.zeros(batch, heads, tokens, len(blocks), dtype=torch.float64)
    for j, ids in enumerate(blocks):
        mean_k = k[:, ids].double().mean(1)  # [B, H, D]
        gates[:, :, :, j] = (q.double() * mean_k[:, None]).sum(-1).transpose(1, 2)
    return gates


def _pools(shape, scope):
    batch, heads, tokens, n = shape
    if scope == "query_head":
        return [
            [(b, h, s, j) for j in range(n)]
            for b in range(batch)
            for h in range(heads)
            for s in range(tokens)
        ]
    if scope == "head_global":
        return [
            [(b, h, s, j) for s in range(tokens) for j in range(n)]
            for b in range(batch)
            for h in range(heads)
        ]
    if scope == "block":
        return [
            [(b, h, s, j) for h in range(heads) for s in range(tokens)]
            for b in range(batch)
            for j in range(n)
        ]
    return [
        [(b, h, s, j) for h in range(heads) for s in range(tokens) for j in range(n)]
        for b in range(batch)
    ]


def naive_keep(
    gates: torch.Tensor,
    block_of: list[int],
    select: str,
    scope: str,
    threshold: float = 0.25,
    topk: int | None = None,
) -> torch.Tensor:
    """The spec's selection rules, one pool at a time in plain Python."""
    g = gates.double().tolist()
    keep = torch.zeros(gates.shape, dtype=torch.bool).tolist()
    for pool in _pools(gates.shape, scope):
        value = {e: g[e[0]][e[1]][e[2]][e[3]] for e in pool}
        selfs = [e for e in pool if block_of[e[2]] == e[3]]
        others = sorted((e for e in pool if block_of[e[2]] != e[3]), key=lambda e: -value[e])
        if select == "topk":
            count = min(len(others), (topk - 1) * len(selfs))
        else:
            low, high = min(value.values()), max(value.values())
            span = high - low if high - low > 1e-6 else 1.0
            norm = {e: (value[e] - low) / span for e in pool}
            total = sum(norm.values()) + 1e-6
            needed = max(0.0, threshold - sum(norm[e] for e in selfs) / total)
            count, mass = len(others), 0.0
            for i, e in enumerate(others):
                mass += norm[e]
                if mass / total >= needed:
                    count = i + 1
                    break
        for b, h, s, j in selfs + others[:count]:
            keep[b][h][s][j] = True
    return torch.tensor(keep)


def dense_masked_attention(q, k, v, token_keep: torch.Tensor) -> torch.Tensor:
    """float64 ``softmax(q k^T / sqrt(D))`` over ``token_keep`` ``[B, H, S, S]``, times v."""
    qh, kh, vh = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = qh @ kh.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~token_keep, float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(1, 2)


def expand_keep(keep: torch.Tensor, block_of: list[int]) -> torch.Tensor:
    """Block keep ``[B, H, S, N]`` -> token keep ``[B, H, S, S]``."""
    return keep[..., torch.tensor(block_of)]
