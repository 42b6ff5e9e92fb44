"""VMoBA on Triton kernels that read query, key and value rows by index (CUDA).

The segments of :mod:`vmoba.attention.segments`, as in the ``varlen`` backend: the queries of
one (sample, head) that kept block ``j`` attend to block ``j``'s keys; segment outputs merge by
their log-sum-exps. FA2's varlen kernels take packed rows, so that backend copies every query
once per kept block (and, in the backward, its gradient and output too). These kernels load
query rows (and their gradients) straight from ``[B, S, H, D]`` by index:

- forward: one program per query tile of a segment, online softmax over the block's keys;
  it writes the tile's partial output and log-sum-exp, merged per query as in ``varlen``
  (in the plan's chunks of at most ``Tuning.row_budget`` packed rows, the partials' memory).
- backward, dk/dv: one program per key tile of a segment, over all the segment's queries,
  with the merged log-sum-exp (exact, as FA2's varlen backward given the merged statistics).
  Keys are disjoint across segments, so all segments run in one launch, with no chunks.
- backward, dq: one program per query tile (chunked like the forward), summed per query.

Keys are read from one head-major, block-ordered copy of k and v per pass (``[B*H*S, D]``,
0.34 GiB at 55K tokens, made again in the backward rather than kept), so each key step is one
TMA tile load. Only a segment's last key step, where it ends inside the tile, is masked; the
products accumulate in place and v is loaded after the softmax, as in FlexAttention's Triton
template. Nothing packed is kept for the backward. Launch shapes: ``Tuning.tiles``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

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
from vmoba.attention.tuning import DEFAULT_TUNING, Tiles, Tuning

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # CPU-only installs, or Triton before 3.3: the backend is unavailable
    triton = None


def _tiles(
    counts: torch.Tensor, first: torch.Tensor, size: int, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles of ``size`` rows over segments of ``counts`` rows starting at ``first``, on their
    device without a host sync (``total``, the number of tiles, comes from the host):
    ``[total]`` int32 segment and first row of each tile, segments in order."""
    per_segment = (counts + size - 1) // size
    segments = torch.arange(counts.numel(), device=counts.device)
    segment = torch.repeat_interleave(segments, per_segment, output_size=total)
    before = torch.cumsum(per_segment, 0) - per_segment
    rank = torch.arange(total, device=counts.device) - before[segment]
    return segment.int(), (first[segment] + rank * size).int()


if triton is not None:
    _LOG2E = tl.constexpr(1.4426950408889634)  # the kernels' softmax runs in base 2 (exp2)
    _LN2 = tl.constexpr(0.6931471805599453)

    @triton.jit
    def _rows(ptr, index, live, DIM: tl.constexpr):
        """Rows ``index`` (int64 ``[R]``) of a ``[*, DIM]`` tensor; zeros where not ``live``."""
        dims = tl.arange(0, DIM)
        return tl.load(ptr + index[:, None] * DIM + dims[None, :], mask=live[:, None], other=0.0)

    @triton.jit
    def _valid_keys(first, end, BLOCK_K: tl.constexpr):
        """Which of the key rows ``first + [0, BLOCK_K)`` lie before ``end``, the segment's end.
        Rows past it hold the next segment's keys (or zeros past the tensor)."""
        return first + tl.arange(0, BLOCK_K) < end

    @triton.jit
    def _key_range(cu_k_ptr, seg, BLOCK_K: tl.constexpr):
        """Segment ``seg``'s keys ``[first, end)`` and ``full_end``, where its whole key steps end
        (a partial, masked step covers ``[full_end, end)`` if they differ)."""
        first = tl.load(cu_k_ptr + seg)
        end = tl.load(cu_k_ptr + seg + 1)
        return first, first + (end - first) // BLOCK_K * BLOCK_K, end

    @triton.jit
    def _forward_step(
        q, k_desc, v_desc, first, end, peak, norm, acc, scale,
        BLOCK_K: tl.constexpr, MASKED: tl.constexpr,
    ):
        """One online-softmax step over key rows ``first + [0, BLOCK_K)`` (TMA tiles of the
        block-ordered k and v): the running row maximum ``peak`` and sum ``norm`` (base 2) and the
        float32 accumulator ``acc``. Only a segment's last, partial step is ``MASKED``."""
        scores = tl.dot(q, tl.trans(k_desc.load([first, 0]))) * (scale * _LOG2E)
        if MASKED:
            scores = tl.where(_valid_keys(first, end, BLOCK_K)[None, :], scores, float("-inf"))
        new_peak = tl.maximum(peak, tl.max(scores, axis=1))
        rescale = tl.exp2(peak - new_peak)
        probs = tl.exp2(scores - new_peak[:, None])
        norm = norm * rescale + tl.sum(probs, axis=1)
        v = v_desc.load([first, 0])  # after the softmax, as FlexAttention's template loads it
        acc = tl.dot(probs.to(v.dtype), v, acc * rescale[:, None])
        return new_peak, norm, acc

    @triton.jit
    def _dq_step(
        q, do, lse2, delta, k_desc, v_desc, first, end, dq, scale,
        BLOCK_K: tl.constexpr, MASKED: tl.constexpr,
    ):
        """One key step of dq (rows ``first + [0, BLOCK_K)``), given the merged log-sum-exp in
        base 2 (``lse2``); only a segment's last, partial step is ``MASKED``."""
        k = k_desc.load([first, 0])
        probs = tl.exp2(tl.dot(q, tl.trans(k)) * (scale * _LOG2E) - lse2[:, None])
        if MASKED:
            probs = tl.where(_valid_keys(first, end, BLOCK_K)[None, :], probs, 0.0)
        dscores = probs * (tl.dot(do, tl.trans(v_desc.load([first, 0]))) - delta[:, None])
        return tl.dot(dscores.to(k.dtype), k, dq)

    @triton.jit
    def _query_rows(
        q_ptr, grad_ptr, lse_ptr, delta_ptr, token_ptr, query_ptr, rows, end, DIM: tl.constexpr
    ):
        """Packed rows ``rows`` before ``end`` for the backward: their mask, and q, dO, merged
        log-sum-exp and ``rowsum(dO * O)`` (zeros past ``end``)."""
        live = rows < end
        token = tl.load(token_ptr + rows, mask=live, other=0).to(tl.int64)
        query = tl.load(query_ptr + rows, mask=live, other=0).to(tl.int64)
        q = _rows(q_ptr, token, live, DIM)
        do = _rows(grad_ptr, token, live, DIM)
        lse = tl.load(lse_ptr + query, mask=live, other=0.0)
        delta = tl.load(delta_ptr + token, mask=live, other=0.0)
        return live, q, do, lse, delta

    @triton.jit
    def _forward_kernel(
        q_ptr, k_desc, v_desc, token_ptr, cu_q_ptr, cu_k_ptr, tile_seg_ptr, tile_start_ptr,
        out_ptr, lse_ptr, tile0, row0, scale,
        DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        tile = tile0 + tl.program_id(0)
        seg = tl.load(tile_seg_ptr + tile)
        rows = tl.load(tile_start_ptr + tile) + tl.arange(0, BLOCK_Q)
        live = rows < tl.load(cu_q_ptr + seg + 1)
        dims = tl.arange(0, DIM)
        token = tl.load(token_ptr + rows, mask=live, other=0).to(tl.int64)
        q = _rows(q_ptr, token, live, DIM)
        peak = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
        norm = tl.zeros([BLOCK_Q], dtype=tl.float32)
        acc = tl.zeros([BLOCK_Q, DIM], dtype=tl.float32)
        key_first, full_end, key_end = _key_range(cu_k_ptr, seg, BLOCK_K)
        for first in range(key_first, full_end, BLOCK_K):
            peak, norm, acc = _forward_step(
                q, k_desc, v_desc, first, key_end, peak, norm, acc, scale, BLOCK_K, False
            )
        if full_end < key_end:
            peak, norm, acc = _forward_step(
                q, k_desc, v_desc, full_end, key_end, peak, norm, acc, scale, BLOCK_K, True
            )
        local = (rows - row0).to(tl.int64)
        out = acc / norm[:, None]
        tl.store(out_ptr + local[:, None] * DIM + dims[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=live[:, None])
        tl.store(lse_ptr + local, (peak + tl.log2(norm)) * _LN2, mask=live)

    @triton.jit
    def _dkdv_kernel(
        q_ptr, k_ptr, v_ptr, grad_ptr, lse_ptr, delta_ptr, token_ptr, query_ptr, key_ptr,
        cu_q_ptr, cu_k_ptr, tile_seg_ptr, tile_start_ptr, dk_ptr, dv_ptr, scale,
        DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        tile = tl.program_id(0)
        seg = tl.load(tile_seg_ptr + tile)
        keys = tl.load(tile_start_ptr + tile) + tl.arange(0, BLOCK_K)
        valid = keys < tl.load(cu_k_ptr + seg + 1)
        k = _rows(k_ptr, keys.to(tl.int64), valid, DIM)
        v = _rows(v_ptr, keys.to(tl.int64), valid, DIM)
        key = tl.load(key_ptr + keys, mask=valid, other=0).to(tl.int64)  # its [B*S*H] row
        dims = tl.arange(0, DIM)
        dk = tl.zeros([BLOCK_K, DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_K, DIM], dtype=tl.float32)
        row_end = tl.load(cu_q_ptr + seg + 1)
        for first in range(tl.load(cu_q_ptr + seg), row_end, BLOCK_Q):
            _, q, do, lse, delta = _query_rows(
                q_ptr, grad_ptr, lse_ptr, delta_ptr, token_ptr, query_ptr,
                first + tl.arange(0, BLOCK_Q), row_end, DIM,
            )
            # rows past the segment load as zeros (q, do, lse, delta): they add nothing below
            probs = tl.exp2(tl.dot(q, tl.trans(k)) * (scale * _LOG2E) - lse[:, None] * _LOG2E)
            dv = tl.dot(tl.trans(probs.to(do.dtype)), do, dv)
            dscores = probs * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk = tl.dot(tl.trans(dscores.to(q.dtype)), q, dk)
        out = key[:, None] * DIM + dims[None, :]
        tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=valid[:, None])

    @triton.jit
    def _dq_kernel(
        q_ptr, k_desc, v_desc, grad_ptr, lse_ptr, delta_ptr, token_ptr, query_ptr, cu_q_ptr,
        cu_k_ptr, tile_seg_ptr, tile_start_ptr, dq_ptr, tile0, row0, scale,
        DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        tile = tile0 + tl.program_id(0)
        seg = tl.load(tile_seg_ptr + tile)
        rows = tl.load(tile_start_ptr + tile) + tl.arange(0, BLOCK_Q)
        live, q, do, lse, delta = _query_rows(
            q_ptr, grad_ptr, lse_ptr, delta_ptr, token_ptr, query_ptr,
            rows, tl.load(cu_q_ptr + seg + 1), DIM,
        )
        dims = tl.arange(0, DIM)
        dq = tl.zeros([BLOCK_Q, DIM], dtype=tl.float32)
        lse2 = lse * _LOG2E
        key_first, full_end, key_end = _key_range(cu_k_ptr, seg, BLOCK_K)
        for first in range(key_first, full_end, BLOCK_K):
            dq = _dq_step(q, do, lse2, delta, k_desc, v_desc, first, key_end, dq, scale,
                          BLOCK_K, False)
        if full_end < key_end:
            dq = _dq_step(q, do, lse2, delta, k_desc, v_desc, full_end, key_end, dq, scale,
                          BLOCK_K, True)
        local = (rows - row0).to(tl.int64)
        tl.store(dq_ptr + local[:, None] * DIM + dims[None, :], dq * scale, mask=live[:, None])


@dataclass(frozen=True)
class _Launch:
    """Host side of one call's work, for the grids: launch shapes, the plan's chunks, and
    ``first_forward_tile`` / ``first_dq_tile`` ``[segments + 1]``, the index of each segment's
    first query tile of the forward's and of dq's size."""

    tiles: Tiles
    chunks: tuple[Chunk, ...]
    first_forward_tile: list[int]
    first_dq_tile: list[int]

    def chunk_tiles(self, chunk: Chunk, first_tile: list[int]) -> tuple[int, int]:
        """The chunk's first query tile (of ``first_tile``'s size) and its number of tiles."""
        first = first_tile[chunk.seg0]
        return first, first_tile[chunk.seg1] - first


class _Work(NamedTuple):
    """Device side: the index tensors the kernels read, saved for the backward through autograd
    (so activation checkpointing drops them with the rest).

    rows: ``[total]`` int32, the plan's query of each packed row in head-major ``[B*H*S]``
    (int32 halves what a layer keeps for its backward: with ``orders``, 8 bytes a packed row).
    cu_q, cu_k: the plan's segment offsets. ``*_segment`` / ``*_start``: ``[T]`` int32 segment
    and first row of every forward query tile, dq query tile and dk/dv key tile.
    """

    rows: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    forward_segment: torch.Tensor
    forward_start: torch.Tensor
    dq_segment: torch.Tensor
    dq_start: torch.Tensor
    key_segment: torch.Tensor
    key_start: torch.Tensor


def _first_tiles(counts: torch.Tensor, size: int) -> list[int]:
    """``[segments + 1]`` index of each segment's first tile of ``size`` rows (host ints)."""
    return [0, *torch.cumsum((counts + size - 1) // size, 0).tolist()]


def _launch(
    plan: SegmentPlan, partition: BlockPartition, groups: int, tiles: Tiles
) -> tuple[_Launch, _Work]:
    """Tile lists of ``plan`` for ``groups = B * H`` (sample, head) pairs. Tile counts come from
    the host copies (the plan's segment sizes, the CPU partition's block sizes)."""
    first_forward = _first_tiles(plan.counts, tiles.forward.tile)
    first_dq = _first_tiles(plan.counts, tiles.dq.tile)
    size_k = tiles.dkdv.tile
    key_tiles = int(((partition.block_sizes + size_k - 1) // size_k).sum()) * groups
    block_sizes = partition.on(plan.cu_k.device).block_sizes
    counts, starts = plan.cu_q.diff(), plan.cu_q[:-1]
    return _Launch(tiles, plan.chunks, first_forward, first_dq), _Work(
        plan.rows.int(),
        plan.cu_q,
        plan.cu_k,
        *_tiles(counts, starts, tiles.forward.tile, first_forward[-1]),
        *_tiles(counts, starts, tiles.dq.tile, first_dq[-1]),
        *_tiles(block_sizes.repeat(groups), plan.cu_k[:-1], size_k, key_tiles),
    )


def _block_ordered(
    k: torch.Tensor, v: torch.Tensor, k_rows: torch.Tensor, tiles: int
) -> tuple[torch.Tensor, torch.Tensor, TensorDescriptor, TensorDescriptor]:
    """k and v ``[B, S, H, D]`` copied to head-major block order ``[B*H*S, D]`` (rows ``k_rows``),
    so every segment's keys are consecutive rows, and descriptors of their ``[tiles, D]`` tiles
    (Hopper's TMA loads them). Each pass makes its own copies: none is kept between them."""
    dim = k.shape[-1]
    k_blocks, v_blocks = (x.reshape(-1, dim)[k_rows] for x in (k, v))
    return (
        k_blocks,
        v_blocks,
        TensorDescriptor.from_tensor(k_blocks, [tiles, dim]),
        TensorDescriptor.from_tensor(v_blocks, [tiles, dim]),
    )


class _IndexedVMoBA(torch.autograd.Function):
    """q, k, v contiguous ``[B, S, H, D]`` -> out, contiguous ``[B, S, H, D]``."""

    @staticmethod
    def forward(ctx, q, k, v, launch: _Launch, work: _Work, perm: torch.Tensor):
        batch, _, heads, dim = q.shape
        t = launch.tiles
        q_rows, k_rows = row_indices(batch, heads, perm)
        token = q_rows[work.rows].int()  # [total] row of each packed query in [B*S*H, D]
        scale = 1.0 / math.sqrt(dim)
        _, _, k_desc, v_desc = _block_ordered(k, v, k_rows, t.forward.step)
        out = torch.zeros(q_rows.numel(), dim, dtype=torch.float32, device=q.device)
        lse = torch.full(q_rows.shape, float("-inf"), dtype=torch.float32, device=q.device)
        orders = destination_orders(work.rows, launch.chunks)
        for c, csr in chunk_orders(launch.chunks, *orders):
            tile0, tiles = launch.chunk_tiles(c, launch.first_forward_tile)
            if tiles == 0:
                continue
            part = torch.empty(c.row1 - c.row0, dim, dtype=q.dtype, device=q.device)
            part_lse = torch.empty(c.row1 - c.row0, dtype=torch.float32, device=q.device)
            _forward_kernel[(tiles,)](
                q, k_desc, v_desc, token, work.cu_q, work.cu_k, work.forward_segment,
                work.forward_start, part, part_lse, tile0, c.row0, scale,
                DIM=dim, BLOCK_Q=t.forward.tile, BLOCK_K=t.forward.step,
                num_warps=t.forward.warps, num_stages=t.forward.stages,
            )
            merge_by_lse_into(
                out[c.dst0 : c.dst1], lse[c.dst0 : c.dst1], part, part_lse,
                destinations(work.rows, c), csr,
            )
        out = token_major(out, batch, heads, q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, q_rows, k_rows, *orders, *work)
        ctx.launch, ctx.scale = launch, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, q_rows, k_rows, order, starts, *work = ctx.saved_tensors
        work = _Work(*work)
        token = q_rows[work.rows].int()  # as in the forward: recomputed, not kept
        launch, scale = ctx.launch, ctx.scale
        t = launch.tiles
        batch, _, heads, dim = q.shape
        grad_out = grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1).flatten()  # [B*S*H] rowsum(dO * O)
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)  # every key is in one block
        k_blocks, v_blocks, k_desc, v_desc = _block_ordered(k, v, k_rows, t.dq.step)
        _dkdv_kernel[(work.key_segment.numel(),)](
            q, k_blocks, v_blocks, grad_out, lse, delta, token, work.rows, k_rows, work.cu_q,
            work.cu_k, work.key_segment, work.key_start, grad_k, grad_v, scale,
            DIM=dim, BLOCK_Q=t.dkdv.step, BLOCK_K=t.dkdv.tile,
            num_warps=t.dkdv.warps, num_stages=t.dkdv.stages,
        )
        grad_q = torch.zeros(lse.numel(), dim, dtype=torch.float32, device=q.device)
        for c, csr in chunk_orders(launch.chunks, order, starts):
            tile0, tiles = launch.chunk_tiles(c, launch.first_dq_tile)
            if tiles == 0:
                continue
            dq = torch.empty(c.row1 - c.row0, dim, dtype=torch.float32, device=q.device)
            _dq_kernel[(tiles,)](
                q, k_desc, v_desc, grad_out, lse, delta, token, work.rows, work.cu_q, work.cu_k,
                work.dq_segment, work.dq_start, dq, tile0, c.row0, scale,
                DIM=dim, BLOCK_Q=t.dq.tile, BLOCK_K=t.dq.step,
                num_warps=t.dq.warps, num_stages=t.dq.stages,
            )
            sum_into(grad_q[c.dst0 : c.dst1], dq, destinations(work.rows, c), csr)
        grad_q = token_major(grad_q, batch, heads, q.dtype)
        return grad_q, grad_k, grad_v, None, None, None


def available_on(device: torch.device) -> bool:
    """Whether the kernels run on ``device``: Triton with tensor descriptors and a Hopper or
    newer GPU (their key tiles are TMA loads; Hopper is where they are tested and timed)."""
    if triton is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def indexed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    partition: BlockPartition,
    tuning: Tuning = DEFAULT_TUNING,
) -> torch.Tensor:
    """VMoBA attention on the index-reading Triton kernels. Arguments, shapes and result as
    :func:`vmoba.attention.reference.reference_attention`; float16/bfloat16 CUDA tensors (float32
    CPU tensors under Triton's interpreter, for tests), head dim a power of two from 16 to 128;
    ``tuning`` gives the plan's bounds and the kernels' launch shapes."""
    if triton is None:
        raise RuntimeError("the indexed backend needs Triton")
    batch, _, heads, _ = q.shape
    q, k, v = (x.contiguous() for x in (q, k, v))
    plan = plan_segments(
        keep, partition, row_budget=tuning.row_budget, plan_entries=tuning.plan_entries
    )
    launch, work = _launch(plan, partition, batch * heads, tuning.tiles)
    return _IndexedVMoBA.apply(q, k, v, launch, work, partition.on(q.device).perm)
