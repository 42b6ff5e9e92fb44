"""``vmoba_attention``: the public entry point (validation, selection, backend dispatch)."""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from vmoba.attention.backends import resolve_backend
from vmoba.attention.compile_limits import compiled_shapes
from vmoba.attention.gates import block_gates
from vmoba.attention.partition import BlockPartition, BlockSpec, Grid, block_partition
from vmoba.attention.selection import Scope, Select, SelectionConfig, select_blocks

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a 4-D tensor [B, S, H, D], got {shape}")
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}.dtype must be one of {FLOAT_DTYPES}, got {x.dtype}")
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape or x.dtype != q.dtype or x.device != q.device:
            raise ValueError(
                f"{name} must match q in shape, dtype and device: q is {tuple(q.shape)} {q.dtype} "
                f"on {q.device}, {name} is {tuple(x.shape)} {x.dtype} on {x.device}"
            )


def _check_grid(grid: Grid, tokens: int) -> None:
    product = 1
    for n in grid:
        product *= n
    if product != tokens:
        raise ValueError(f"grid {tuple(grid)} has {product} tokens but q has S = {tokens}")


COMPILE_SELECTION = True
"""Run gates + selection on CUDA through ``torch.compile`` (one graph per shape and rule): it
fuses the selection's ~60 small operations, which otherwise cost more in launches than in math
at short lengths."""


def _gates_and_selection(
    q: torch.Tensor, k: torch.Tensor, partition: BlockPartition, config: SelectionConfig
) -> torch.Tensor:
    return select_blocks(block_gates(q, k, partition), partition, config)


@functools.cache
def _compiled_gates_and_selection():  # built on first use: importing dynamo takes seconds
    return torch.compile(_gates_and_selection, dynamic=False)


def _compiles(q: torch.Tensor) -> bool:
    """Whether selection runs compiled: on CUDA, unless already inside a compiled region."""
    return COMPILE_SELECTION and q.is_cuda and not torch.compiler.is_compiling()


SELECTION_ENTRIES = 1 << 28
"""Gate entries (``B * heads * S * N``) that gates and selection hold at once. With blocks of a
fixed size ``N`` grows with ``S``, so a layer's entries grow as ``S^2``: 5.4e9 for a 3D layer at
589,824 tokens, whose 8-byte temporaries (40.5 GiB) ran one H200 out of memory. Above this many,
rules whose pools stay within one head (``query_head``, ``head_global``) select in groups of
heads, which gives the same mask with temporaries bounded by the group."""


def head_groups(batch: int, tokens: int, heads: int, blocks: int, scope: Scope) -> list[slice]:
    """The head slices selection runs in: all heads at once, or groups of at most
    :data:`SELECTION_ENTRIES` entries (one head at least) where pools stay within a head."""
    per_head = batch * tokens * blocks
    if scope not in ("query_head", "head_global") or per_head * heads <= SELECTION_ENTRIES:
        return [slice(0, heads)]
    size = max(1, SELECTION_ENTRIES // per_head)
    return [slice(h, min(h + size, heads)) for h in range(0, heads, size)]


def vmoba_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid: Grid,
    block: BlockSpec,
    config: SelectionConfig,
) -> tuple[BlockPartition, torch.Tensor]:
    """The partition and keep mask ``[B, H, S, N]`` that :func:`vmoba_attention` attends with."""
    partition = block_partition(grid, block)
    batch, tokens, heads, _ = q.shape
    _check_grid(partition.grid, tokens)
    compiled = _compiles(q)
    select = _compiled_gates_and_selection() if compiled else _gates_and_selection
    part = partition.on(q.device)
    groups = head_groups(batch, tokens, heads, partition.num_blocks, config.scope)
    with compiled_shapes(strict=False) if compiled else contextlib.nullcontext():
        if len(groups) == 1:
            return partition, select(q, k, part, config)
        keep = torch.empty(
            batch, heads, tokens, partition.num_blocks, dtype=torch.bool, device=q.device
        )
        for group in groups:
            keep[:, group] = select(q[:, :, group], k[:, :, group], part, config)
    return partition, keep


def vmoba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: Grid,
    block: BlockSpec,
    select: Select = "threshold",
    scope: Scope = "head_global",
    threshold: float = 0.25,
    topk: Optional[int] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Video Mixture of Block Attention (docs/attention.md has the exact semantics).

    Args:
        q, k, v: ``[B, S, H, D]`` float tensors, video tokens in (t, h, w) raster order, RoPE applied.
        grid: the latent token grid ``(T, Hg, Wg)`` with ``T * Hg * Wg == S``.
        block: ``ct`` (1D temporal), ``(ch, cw)`` (2D spatial) or ``(ct, ch, cw)`` (3D cuboid).
        select: ``"topk"`` or ``"threshold"``.
        scope: ``"query_head"``, ``"head_global"``, ``"block"`` (threshold only) or ``"overall"``.
        threshold: ``tau`` in ``[0, 1]`` for ``select="threshold"`` (paper: 0.25).
        topk: blocks per query, self block included, for ``select="topk"``.
        backend: ``"auto"`` or a registered name (``vmoba.attention.backend_names()``).

    Returns:
        ``[B, S, H, D]``, same order and dtype as ``q``; differentiable w.r.t. q, k and v (the
        selection itself carries no gradient).
    """
    _check_qkv(q, k, v)
    config = SelectionConfig(select=select, scope=scope, threshold=threshold, topk=topk)
    impl = resolve_backend(backend, q.device, q.dtype, q.shape[-1])
    partition, keep = vmoba_selection(q, k, grid=grid, block=block, config=config)
    return impl.attend(q, k, v, keep, partition)
