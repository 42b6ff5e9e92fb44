"""Reductions of packed segment rows onto their destination rows, for the varlen backend.

Each query appears in one packed row per key block it kept. ``merge_by_lse_into`` folds a batch
of a query's rows into its running attention output by their log-sum-exps; ``sum_into`` adds them
to its running query gradient. Both accumulate in float32 buffers, so the rows of one query may
arrive in several batches (the varlen backend's memory-bounded chunks). Float64 accumulators
(float64 inputs, CPU tests) take the torch path. On CUDA a Triton kernel
walks each destination's rows in a CSR order (no atomics, no float32 copy of the packed rows);
elsewhere ``index_add`` does the same math.
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
    (``bincount`` on CUDA would read the largest row back)."""
    destinations, order = torch.sort(rows, stable=True)
    starts = torch.searchsorted(destinations, torch.arange(total + 1, device=rows.device))
    return order, starts


if triton is not None:

    @triton.jit
    def _reduce_rows_kernel(
        x_ptr, lse_ptr, order_ptr, starts_ptr, out_ptr, out_lse_ptr, dim,
        BLOCK_D: tl.constexpr, BY_LSE: tl.constexpr,
    ):
        row = tl.program_id(0)
        start = tl.load(starts_ptr + row)
        end = tl.load(starts_ptr + row + 1)
        if start == end:  # no rows for this destination in this batch: keep its running value
            return
        cols = tl.arange(0, BLOCK_D)
        valid = cols < dim
        acc = tl.load(out_ptr + row * dim + cols, mask=valid, other=0.0)
        if BY_LSE:  # the running (output, lse) is one more row of the online softmax
            peak = tl.load(out_lse_ptr + row)
            norm = (peak > float("-inf")).to(tl.float32)
        for e in range(start, end):
            src = tl.load(order_ptr + e).to(tl.int64)
            x = tl.load(x_ptr + src * dim + cols, mask=valid, other=0.0).to(tl.float32)
            if BY_LSE:
                lse = tl.load(lse_ptr + src)
                new_peak = tl.maximum(peak, lse)
                scale, weight = tl.exp(peak - new_peak), tl.exp(lse - new_peak)
                acc = acc * scale + x * weight
                norm = norm * scale + weight
                peak = new_peak
            else:
                acc += x
        if BY_LSE:
            acc = acc / norm
            tl.store(out_lse_ptr + row, peak + tl.log(norm))
        tl.store(out_ptr + row * dim + cols, acc, mask=valid)


def _check_accumulator(out: torch.Tensor) -> None:
    if out.dtype not in (torch.float32, torch.float64) or not out.is_contiguous():
        raise ValueError("accumulators must be contiguous float32 or float64 tensors")


def _reduce_on_gpu(x, lse, rows, out, out_lse, by_lse: bool, csr: CSR | None) -> bool:
    if triton is None or not x.is_cuda or out.dtype != torch.float32:
        return False
    order, starts = csr if csr is not None else rows_by_destination(rows, out.shape[0])
    _reduce_rows_kernel[(out.shape[0],)](
        x.contiguous(), lse, order, starts, out, out_lse, x.shape[-1],
        BLOCK_D=triton.next_power_of_2(x.shape[-1]), BY_LSE=by_lse,
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
