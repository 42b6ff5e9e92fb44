"""Reductions of packed segment rows onto their destination rows, for the varlen backend.

Each query appears in one packed row per key block it kept. ``merge_by_lse_into`` folds a batch
of a query's rows into its running attention output by their log-sum-exps; ``sum_into`` adds them
to its running query gradient. Both accumulate in float32 buffers, so the rows of one query may
arrive in several batches (the varlen backend's memory-bounded chunks). Float64 accumulators
(float64 inputs, CPU tests) take the torch path. On CUDA a Triton kernel
walks each destination's rows in a CSR order (no atomics, no float32 copy of the packed rows),
16 destinations a program; elsewhere ``index_add`` does the same math.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path below is used
    triton = None


CSR = tuple[torch.Tensor, torch.Tensor]


def rows_by_destination(rows: torch.Tensor, total: int) -> CSR:
    """CSR view of packed rows: ``order`` ``[T]`` lists packed rows grouped by destination
    (ascending), ``starts`` ``[total + 1]`` where each destination's group begins. No host sync
    (``bincount`` on CUDA would read the largest row back). Destinations below 2^31 sort as int32
    keys: a radix sort then makes half the passes of int64 keys."""
    dtype = torch.int32 if total < 2**31 else torch.int64
    destinations, order = torch.sort(rows.to(dtype), stable=True)
    starts = torch.searchsorted(
        destinations, torch.arange(total + 1, dtype=dtype, device=rows.device)
    )
    return order, starts


if triton is not None:

    @triton.jit
    def _reduce_rows_kernel(
        x_ptr, lse_ptr, order_ptr, starts_ptr, out_ptr, out_lse_ptr, total, dim,
        ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BY_LSE: tl.constexpr,
    ):
        # ROWS destinations per program, their i-th packed rows read together: independent
        # loads in flight instead of one destination's chain of dependent ones
        dst = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        start = tl.load(starts_ptr + dst, mask=dst < total, other=0)
        count = tl.load(starts_ptr + dst + 1, mask=dst < total, other=0) - start
        touched = count > 0  # destinations without rows in this batch keep their running value
        cols = tl.arange(0, BLOCK_D)
        tile = dst.to(tl.int64)[:, None] * dim + cols[None, :]
        in_tile = touched[:, None] & (cols < dim)[None, :]
        acc = tl.load(out_ptr + tile, mask=in_tile, other=0.0)
        if BY_LSE:  # the running (output, lse) is one more row of the online softmax
            peak = tl.load(out_lse_ptr + dst, mask=touched, other=float("-inf"))
            norm = (peak > float("-inf")).to(tl.float32)
        for i in range(0, tl.max(count, axis=0)):
            has = i < count
            src = tl.load(order_ptr + start + i, mask=has, other=0).to(tl.int64)
            x = tl.load(x_ptr + src[:, None] * dim + cols[None, :],
                        mask=has[:, None] & in_tile, other=0.0).to(tl.float32)
            if BY_LSE:
                lse = tl.load(lse_ptr + src, mask=has, other=0.0)
                new_peak = tl.where(has, tl.maximum(peak, lse), peak)
                scale = tl.where(has, tl.exp(peak - new_peak), 1.0)
                weight = tl.where(has, tl.exp(lse - new_peak), 0.0)
                acc = acc * scale[:, None] + x * weight[:, None]
                norm = norm * scale + weight
                peak = new_peak
            else:
                acc += x
        if BY_LSE:
            acc = acc / tl.where(touched, norm, 1.0)[:, None]
            tl.store(out_lse_ptr + dst, peak + tl.log(norm), mask=touched)
        tl.store(out_ptr + tile, acc, mask=in_tile)

    _ROWS = 16
    _NUM_WARPS = 8  # 8 registers of each [16, D] tile a thread: no spills, 2 programs an SM


def kernel_runs(x: torch.Tensor) -> bool:
    """Whether the reductions of ``x``'s rows run the Triton kernel (CUDA tensors)."""
    return triton is not None and x.is_cuda


def _check_accumulator(out: torch.Tensor) -> None:
    if out.dtype not in (torch.float32, torch.float64) or not out.is_contiguous():
        raise ValueError("accumulators must be contiguous float32 or float64 tensors")


def _reduce_on_gpu(x, lse, rows, out, out_lse, by_lse: bool, csr: CSR | None) -> bool:
    if not kernel_runs(x) or out.dtype != torch.float32:
        return False
    order, starts = csr if csr is not None else rows_by_destination(rows, out.shape[0])
    total = out.shape[0]
    _reduce_rows_kernel[(triton.cdiv(total, _ROWS),)](
        x.contiguous(), lse, order, starts, out, out_lse, total, x.shape[-1],
        ROWS=_ROWS, BLOCK_D=triton.next_power_of_2(x.shape[-1]), BY_LSE=by_lse,
        num_warps=_NUM_WARPS,
    )
    return True


def merge_by_lse_into(
    out: torch.Tensor,
    out_lse: torch.Tensor,
    x: torch.Tensor,
    lse: torch.Tensor,
    rows: torch.Tensor,
    csr: CSR | None = None,
) -> None:
    """Softmax-merge packed outputs ``x`` ``[T, D]`` with log-sum-exps ``lse`` ``[T]`` (float32)
    into the running outputs ``out`` ``[R, D]`` and ``out_lse`` ``[R]`` (float32 or float64, in
    place; start them at 0 and -inf). ``rows`` ``[T]`` int64 are the destinations in ``[0, R)``;
    ``csr``, if given, is their :func:`rows_by_destination` (else sorted here on the GPU)."""
    _check_accumulator(out)
    _check_accumulator(out_lse)
    if _reduce_on_gpu(x, lse.contiguous(), rows, out, out_lse, by_lse=True, csr=csr):
        return
    lse = lse.to(out_lse.dtype)
    peak = out_lse.scatter_reduce(0, rows, lse, "amax", include_self=True)
    finite_peak = torch.where(torch.isinf(peak), 0.0, peak)
    weight = torch.exp(lse - finite_peak[rows])
    norm = torch.exp(out_lse - finite_peak).index_add_(0, rows, weight)
    acc = (out * torch.exp(out_lse - finite_peak)[:, None]).index_add_(
        0, rows, x.to(out.dtype) * weight[:, None]
    )
    touched = norm > 0
    out.copy_(torch.where(touched[:, None], acc / norm.clamp_min(1e-38)[:, None], out))
    out_lse.copy_(torch.where(touched, finite_peak + norm.log(), out_lse))


def sum_into(
    out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, csr: CSR | None = None
) -> None:
    """Add packed rows ``x`` ``[T, D]`` to ``out`` ``[R, D]`` (float32 or float64, in place) at
    ``rows`` (``csr`` as in :func:`merge_by_lse_into`)."""
    _check_accumulator(out)
    if not _reduce_on_gpu(x, x, rows, out, out, by_lse=False, csr=csr):
        out.index_add_(0, rows, x.to(out.dtype))
