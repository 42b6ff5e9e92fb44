"""Block partition of a video token grid into 1D temporal, 2D spatial or 3D cuboid blocks.

Tokens arrive in (t, h, w) raster order. A partition assigns each token to a block; a fast kernel
wants every block contiguous, so the partition also carries the permutation that sorts tokens by
block (stable, so tokens keep raster order inside a block) and its inverse.

Ragged edges: when a grid dimension ``n`` is not a multiple of the block size ``b``, the last block
along it covers ``[b * (n // b), n)`` and simply has fewer tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Literal, Union

import torch

Grid = tuple[int, int, int]
BlockSpec = Union[int, tuple[int, int], tuple[int, int, int]]
LayerKind = Literal["1d", "2d", "3d"]
LAYER_KINDS: tuple[LayerKind, ...] = ("1d", "2d", "3d")


@dataclass(frozen=True)
class BlockPartition:
    """A partition of ``S = T * Hg * Wg`` tokens into ``N`` blocks (int64 tensors, on the CPU
    unless taken from :meth:`on`).

    Attributes:
        grid: ``(T, Hg, Wg)``.
        block_shape: the block as a cuboid ``(ct, ch, cw)`` (a 1D block spans all of h and w, a 2D
            block all of t).
        kind: ``"1d"``, ``"2d"`` or ``"3d"``, from how the block was given.
        block_index: ``[S]``, the block of each token, in raster order.
        block_sizes: ``[N]``, tokens per block.
        block_offsets: ``[N + 1]``, cumulative sizes: block ``j`` is ``perm[offsets[j]:offsets[j+1]]``.
        perm: ``[S]``, ``x[:, perm]`` puts each block's tokens contiguous, blocks in raster order.
        inverse: ``[S]``, ``x_blocked[:, inverse]`` restores raster order.
    """

    grid: Grid
    block_shape: Grid
    kind: LayerKind
    block_index: torch.Tensor
    block_sizes: torch.Tensor
    block_offsets: torch.Tensor
    perm: torch.Tensor
    inverse: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return int(self.block_sizes.numel())

    @property
    def max_block_size(self) -> int:
        """Tokens in the largest block: a whole cuboid (only blocks at a ragged edge are smaller)."""
        return math.prod(self.block_shape)

    @property
    def num_tokens(self) -> int:
        return int(self.block_index.numel())

    def on(self, device: torch.device | str) -> "BlockPartition":
        """This partition with its tensors on ``device``, cached: a blocking host-to-device copy
        waits for the GPU, so hot paths take their index tensors from here."""
        device = torch.device(device)
        if self.block_index.device == device:  # also keeps torch.compile out of the cache
            return self
        return _cached_partition_on(self.grid, self.block_shape, self.kind, device)


def layer_kind(block: BlockSpec) -> LayerKind:
    """``int`` -> ``"1d"``, ``(ch, cw)`` -> ``"2d"``, ``(ct, ch, cw)`` -> ``"3d"``."""
    if isinstance(block, int) and not isinstance(block, bool):
        return "1d"
    if isinstance(block, (tuple, list)) and len(block) in (2, 3):
        return "2d" if len(block) == 2 else "3d"
    raise ValueError(
        f"block must be an int (1D temporal), a pair (ch, cw) (2D spatial) or a triple "
        f"(ct, ch, cw) (3D cuboid), got {block!r}"
    )


def _positive_ints(name: str, values: object, length: int) -> tuple[int, ...]:
    if (
        not isinstance(values, (tuple, list))
        or len(values) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ValueError(f"{name} must be {length} positive ints, got {values!r}")
    return tuple(values)


def block_shape(grid: Grid, block: BlockSpec) -> Grid:
    """Normalise ``block`` to a cuboid ``(ct, ch, cw)`` and check that it fits in ``grid``."""
    t, h, w = _positive_ints("grid", grid, 3)
    kind = layer_kind(block)
    if kind == "1d":
        if block < 1:
            raise ValueError(f"block must be a positive int (1D temporal), got {block!r}")
        shape = (block, h, w)
    elif kind == "2d":
        ch, cw = _positive_ints("block", block, 2)
        shape = (t, ch, cw)
    else:
        shape = _positive_ints("block", block, 3)
    if any(b > n for b, n in zip(shape, (t, h, w))):
        raise ValueError(
            f"block {block!r} (as a cuboid {shape}) is larger than grid {tuple(grid)}: each block "
            f"size must be at most the grid size along its dimension"
        )
    return shape


def block_partition(grid: Grid, block: BlockSpec) -> BlockPartition:
    """The partition of ``grid`` into blocks of ``block`` (see the module docstring)."""
    shape = block_shape(grid, block)
    return _cached_partition(tuple(grid), shape, layer_kind(block))


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached tensors must also serve autograd after a sampling call
def _cached_partition(grid: Grid, shape: Grid, kind: LayerKind) -> BlockPartition:
    t, h, w = grid
    ct, ch, cw = shape
    nh, nw = -(-h // ch), -(-w // cw)
    tt = torch.arange(t).view(t, 1, 1) // ct
    hh = torch.arange(h).view(1, h, 1) // ch
    ww = torch.arange(w).view(1, 1, w) // cw
    block_index = ((tt * nh + hh) * nw + ww).flatten()  # [S], block ids in raster order of blocks
    perm = torch.sort(block_index, stable=True).indices
    # Not bincount: under torch.compile (which traces through the lru_cache) its size would be
    # data-dependent; this one is static, so the partition traces in a fullgraph.
    sizes = torch.zeros(-(-t // ct) * nh * nw, dtype=torch.int64)
    sizes.index_add_(0, block_index, torch.ones_like(block_index))
    offsets = torch.zeros(sizes.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(sizes, 0)
    return BlockPartition(
        grid=grid,
        block_shape=shape,
        kind=kind,
        block_index=block_index,
        block_sizes=sizes,
        block_offsets=offsets,
        perm=perm,
        inverse=torch.argsort(perm),
    )


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _cached_partition_on(
    grid: Grid, shape: Grid, kind: LayerKind, device: torch.device
) -> BlockPartition:
    cpu = _cached_partition(grid, shape, kind)
    if device.type == "cpu":
        return cpu
    tensors = ("block_index", "block_sizes", "block_offsets", "perm", "inverse")
    return dataclasses.replace(cpu, **{name: getattr(cpu, name).to(device) for name in tensors})
