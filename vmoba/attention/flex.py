"""VMoBA on FlexAttention: a BlockMask built from the selection, one fused kernel.

FlexAttention computes attention in tiles of ``TILE = (query tile, key tile)`` tokens and skips
the tiles a ``BlockMask`` leaves out. In block order (q, k and v permuted by the partition, so each
key block is contiguous, as in the other backends) the mask lists, per (sample, head, query tile):

- *full* key tiles: every query of the tile keeps every key block the tile touches, so no
  ``mask_mod`` call is needed;
- *partial* key tiles: some query of the tile keeps some key block the tile touches; inside them
  ``mask_mod`` looks up the query's keep flag of the key's block.

Both come from reductions of ``keep`` over query tiles (``[B, H, S / Q_TILE, N]``) and a small
tile-block overlap table (``[S / KV_TILE, N]``): no ``S x S`` tensor, no host sync, no
data-dependent shape, so the whole call traces under ``torch.compile(fullgraph=True)``.

Work follows the per-tile union of the selection: a tile is computed whole as soon as one of its
queries needs it. Where neighbouring queries choose different blocks (random inputs) that union is
denser than :func:`vmoba.attention.selection.kept_density`; :func:`flex_tile_density` measures it.

Kernels: on CUDA a module-level ``torch.compile(flex_attention)`` (one compile per shape, block
count and dtype, up to :data:`compile_limits.COMPILED_SHAPES`; past that a call raises rather
than fall back to the unfused ``S x S`` path), whose backward is FlexAttention's own. On the
CPU, FlexAttention's unfused eager implementation: forward only (torch has no CPU backward for
it) and ``S x S`` scores, for tests and debugging.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.nn.attention import flex_attention as torch_flex

from vmoba.attention.compile_limits import compiled_shapes
from vmoba.attention.partition import BlockPartition

TILE: tuple[int, int] = (128, 128)  # (query tile, key tile) tokens: FlexAttention's default


@functools.cache
def _compiled_flex():  # built on first use: creating it imports dynamo, over a second
    return torch.compile(torch_flex.flex_attention, dynamic=False)


def _tile_block_overlap(
    partition: BlockPartition, kv_tile: int, device: torch.device
) -> torch.Tensor:
    """``[S / kv_tile, N]`` float: 1 where key tile ``t`` (block order) has a key of block ``j``."""
    offsets = partition.on(device).block_offsets
    starts = torch.arange(0, partition.num_tokens, kv_tile, device=device)
    ends = (starts + kv_tile).clamp_max(partition.num_tokens)
    overlap = (offsets[None, :-1] < ends[:, None]) & (offsets[None, 1:] > starts[:, None])
    return overlap.float()


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's row format of a tile mask ``[B, H, Q, K]``: counts ``[B, H, Q]`` and the kept
    tile indices first, ascending ``[B, H, Q, K]`` (both int32)."""
    as_int = tiles.to(torch.int32)
    order = as_int.argsort(dim=-1, descending=True, stable=True)
    return as_int.sum(-1, dtype=torch.int32), order.to(torch.int32)


def _tiles(
    keep: torch.Tensor, partition: BlockPartition, tile: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile masks of a selection and the lookup tables of its ``mask_mod``.

    Returns:
        query_keep: ``[B, H, Q * q_tile, N]`` bool, ``keep`` with queries in block order, the last
            query repeated to fill the last tile (neutral for the tile's any/all).
        key_block: ``[K * kv_tile]`` int64, the block of each key in block order (the last key
            repeated).
        partial, full: ``[B, H, Q, K]`` bool tile masks (disjoint), ``Q`` and ``K`` the query and
            key tile counts.
    """
    batch, heads, tokens, blocks = keep.shape
    q_tile, kv_tile = tile
    num_q, num_kv = -(-tokens // q_tile), -(-tokens // kv_tile)
    device = keep.device
    on_device = partition.on(device)
    perm, block_index = on_device.perm, on_device.block_index
    rows = perm[torch.arange(num_q * q_tile, device=device).clamp_max(tokens - 1)]
    query_keep = keep[:, :, rows]  # [B, H, Q * q_tile, N]
    by_tile = query_keep.view(batch, heads, num_q, q_tile, blocks)
    overlap = _tile_block_overlap(partition, kv_tile, device).T  # [N, K]
    needed = (by_tile.any(3).float() @ overlap) > 0  # some query keeps a block of the key tile
    full = ((~by_tile.all(3)).float() @ overlap) == 0  # every query keeps all of them
    keys = perm[torch.arange(num_kv * kv_tile, device=device).clamp_max(tokens - 1)]
    return query_keep, block_index[keys], needed & ~full, full


def flex_block_mask(
    keep: torch.Tensor, partition: BlockPartition, tile: tuple[int, int] = TILE
) -> torch_flex.BlockMask:
    """The FlexAttention BlockMask of a selection, for q, k, v in block order.

    Args:
        keep: ``[B, H, S, N]`` bool block keep mask (raster query order).
        partition: the partition of the ``S`` tokens into ``N`` blocks.
        tile: ``(query tile, key tile)`` sizes in tokens; ``S`` need not be a multiple.

    Returns:
        A BlockMask over ``[B, H, S, S]`` (block order) with tile tensors ``[B, H, S / q_tile,
        S / kv_tile]`` (rounded up) and a ``mask_mod`` for the partial tiles.
    """
    query_keep, key_block, partial, full = _tiles(keep, partition, tile)

    def kept(b, h, q_idx, kv_idx):
        return query_keep[b, h, q_idx, key_block[kv_idx]]

    tokens = partition.num_tokens
    return torch_flex.BlockMask.from_kv_blocks(
        *_ordered(partial),
        *_ordered(full),
        BLOCK_SIZE=tile,
        mask_mod=kept,
        seq_lengths=(tokens, tokens),
    )


def flex_tile_density(
    keep: torch.Tensor, partition: BlockPartition, tile: tuple[int, int] = TILE
) -> torch.Tensor:
    """Fraction of (query tile, key tile) pairs FlexAttention computes, over all samples and heads
    (0-dim float64). Compare with ``kept_density``: the excess is work spent on unkept pairs."""
    _, _, partial, full = _tiles(keep, partition, tile)
    return (partial | full).double().mean()


def shape_limits(device: torch.device) -> contextlib.AbstractContextManager:
    """The compile limits a FlexAttention call on ``device`` runs under: on CUDA, up to
    :data:`~vmoba.attention.compile_limits.COMPILED_SHAPES` graphs and then an error, never
    FlexAttention's eager path, which materialises ``S x S`` scores (inside a caller's compiled
    graph, the caller's limits); on the CPU (eager) none."""
    if device.type == "cuda" and not torch.compiler.is_compiling():
        return compiled_shapes(strict=True)
    return contextlib.nullcontext()


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    partition: BlockPartition,
) -> torch.Tensor:
    """Masked attention on FlexAttention with :func:`flex_block_mask`. Arguments, shapes and result
    as :func:`vmoba.attention.reference.reference_attention`; math in the inputs' dtype with float32
    accumulation on CUDA (compiled kernel), float32/float64 on the CPU (eager, forward only)."""
    on_device = partition.on(q.device)
    perm, inverse = on_device.perm, on_device.inverse
    qh, kh, vh = (x[:, perm].transpose(1, 2) for x in (q, k, v))  # [B, H, S, D], block order
    attend = _compiled_flex() if q.device.type == "cuda" else torch_flex.flex_attention
    with shape_limits(q.device):
        out = attend(qh, kh, vh, block_mask=flex_block_mask(keep, partition, TILE))
    return out.transpose(1, 2)[:, inverse]
