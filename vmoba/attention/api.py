"""``vmoba_attention``: the public entry point (validation, selection, backend dispatch)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Literal, NamedTuple, Union, overload

import torch

from vmoba.attention.backends import check_backend_name, resolve_backend
from vmoba.attention.compile_limits import compiled_shapes
from vmoba.attention.gates import block_gates
from vmoba.attention.partition import BlockPartition, BlockSpec, Grid, block_partition, layer_kind
from vmoba.attention.selection import (
    HEAD_LOCAL_SCOPES,
    Scope,
    SelectionConfig,
    kept_density,
    select_blocks,
)
from vmoba.attention.tuning import DEFAULT_TUNING, Tuning

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


@dataclass(frozen=True, kw_only=True)
class VMoBAConfig(SelectionConfig):
    """One VMoBA layer: its block, its selection rule (the fields of :class:`SelectionConfig`,
    which may also be given positionally) and its backend, all validated here.

    Args:
        block: ``ct`` (1D temporal), ``(ch, cw)`` (2D spatial) or ``(ct, ch, cw)`` (3D cuboid);
            whether it fits the token grid is checked per call.
        backend: ``"auto"`` or a registered name (``vmoba.attention.backend_names()``).
    """

    block: BlockSpec
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        layer_kind(self.block)
        check_backend_name(self.backend)


class Selection(NamedTuple):
    """What a call attended: the partition of its ``S`` tokens into ``N`` blocks and the keep
    mask ``keep`` ``[B, H, S, N]`` (bool, no gradient)."""

    partition: BlockPartition
    keep: torch.Tensor

    @property
    def density(self) -> torch.Tensor:
        """Fraction of (query, key) pairs attended (0-dim float64, no host sync)."""
        return kept_density(self.keep, self.partition)


def _gates_and_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    partition: BlockPartition,
    config: SelectionConfig,
    tuning: Tuning,
) -> torch.Tensor:
    return select_blocks(block_gates(q, k, partition), partition, config, tuning)


@functools.cache
def _compiled_gates_and_selection():  # built on first use: importing dynamo takes seconds
    return torch.compile(_gates_and_selection, dynamic=False)


def _compiles(q: torch.Tensor, tuning: Tuning) -> bool:
    """Whether selection runs compiled: on CUDA if ``tuning`` says so, unless already inside a
    compiled region."""
    return tuning.compile_selection and q.is_cuda and not torch.compiler.is_compiling()


def head_groups(
    batch: int, tokens: int, heads: int, blocks: int, scope: Scope, max_entries: int
) -> list[slice]:
    """The head slices selection runs in: all heads at once, or groups of at most
    ``max_entries`` gate entries (one head at least) where pools stay inside a head."""
    per_head = batch * tokens * blocks
    if scope not in HEAD_LOCAL_SCOPES or per_head * heads <= max_entries:
        return [slice(0, heads)]
    size = max(1, max_entries // per_head)
    return [slice(h, min(h + size, heads)) for h in range(0, heads, size)]


def vmoba_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid: Grid,
    block: BlockSpec,
    config: SelectionConfig,
    tuning: Tuning = DEFAULT_TUNING,
) -> Selection:
    """The partition and keep mask ``[B, H, S, N]`` that :func:`vmoba_attention` attends with.

    Args:
        q, k: ``[B, S, H, D]``.
        grid, block: as in :func:`vmoba_attention`.
        config: the selection rule (a :class:`VMoBAConfig` is one; its block is not read).
        tuning: whether selection compiles on CUDA, and the bounds on its temporaries.
    """
    partition = block_partition(grid, block)
    batch, tokens, heads, _ = q.shape
    _check_grid(partition.grid, tokens)
    compiled = _compiles(q, tuning)
    select = _compiled_gates_and_selection() if compiled else _gates_and_selection
    part = partition.on(q.device)
    groups = head_groups(
        batch, tokens, heads, partition.num_blocks, config.scope, tuning.selection_entries
    )
    with compiled_shapes(strict=False) if compiled else contextlib.nullcontext():
        if len(groups) == 1:
            return Selection(partition, select(q, k, part, config, tuning))
        keep = torch.empty(
            batch, heads, tokens, partition.num_blocks, dtype=torch.bool, device=q.device
        )
        for group in groups:
            keep[:, group] = select(q[:, :, group], k[:, :, group], part, config, tuning)
    return Selection(partition, keep)


@overload
def vmoba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: Grid,
    config: VMoBAConfig,
    tuning: Tuning = ...,
    return_selection: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def vmoba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: Grid,
    config: VMoBAConfig,
    tuning: Tuning = ...,
    return_selection: Literal[True],
) -> tuple[torch.Tensor, Selection]: ...


def vmoba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: Grid,
    config: VMoBAConfig,
    tuning: Tuning = DEFAULT_TUNING,
    return_selection: bool = False,
) -> Union[torch.Tensor, tuple[torch.Tensor, Selection]]:
    """Video Mixture of Block Attention (docs/attention.md has the exact semantics).

    Args:
        q, k, v: ``[B, S, H, D]`` float tensors, video tokens in (t, h, w) raster order, RoPE applied.
        grid: the latent token grid ``(T, Hg, Wg)`` with ``T * Hg * Wg == S``.
        config: the layer's block, selection rule and backend.
        tuning: performance knobs of selection and the packed backends (none changes a result).
        return_selection: also return the :class:`Selection` attended (for density logging and
            pictures).

    Returns:
        ``[B, S, H, D]``, same order and dtype as ``q``; differentiable w.r.t. q, k and v (the
        selection itself carries no gradient). With ``return_selection``, ``(out, selection)``.
    """
    _check_qkv(q, k, v)
    impl = resolve_backend(config.backend, q.device, q.dtype, q.shape[-1])
    selection = vmoba_selection(
        q, k, grid=grid, block=config.block, config=config, tuning=tuning
    )
    out = impl.attend(q, k, v, selection.keep, selection.partition, tuning)
    return (out, selection) if return_selection else out
