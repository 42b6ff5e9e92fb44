"""Reductions of packed segment rows onto their destination rows, for the varlen backend.

Each query appears in one packed row per key block it kept. ``merge_by_lse`` combines a query's
rows by their log-sum-exps into its attention output; ``sum_by_destination`` adds them up (the
query gradient). On CUDA a Triton kernel walks each destination's rows in a CSR order (no
atomics, no float32 copy of the packed rows); elsewhere ``index_add`` does the same math.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path below is used
    triton = None


def rows_by_destination(rows: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR view of packed rows: ``order`` ``[T]`` lists packed rows grouped by destination
    (ascending), ``starts`` ``[total + 1]`` where each destination's group begins."""
    order = torch.argsort(rows, stable=True)
    starts = torch.zeros(total + 1, dtype=torch.int64, device=rows.device)
    starts[1:] = torch.cumsum(torch.bincount(rows, minlength=total), 0)
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
        cols = tl.arange(0, BLOCK_D)
        valid = cols < dim
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        peak = tl.full([], float("-inf"), tl.float32)
        norm = tl.zeros([], dtype=tl.float32)
        for e in range(start, end):
            src = tl.load(order_ptr + e)
            x = tl.load(x_ptr + src * dim + cols, mask=valid, other=0.0).to(tl.float32)
            if BY_LSE:  # online softmax over the row's segments
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
        tl.store(out_ptr + row * dim + cols, acc.to(out_ptr.dtype.element_ty), mask=valid)


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


def merge_by_lse(
    x: torch.Tensor, lse: torch.Tensor, rows: torch.Tensor, order: torch.Tensor, starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-merge packed outputs ``x`` ``[T, D]`` with log-sum-exps ``lse`` ``[T]`` (float32)
    onto ``R = len(starts) - 1`` rows: ``[R, D]`` in ``x.dtype`` and the merged ``[R]`` float32."""
    total, dim = starts.numel() - 1, x.shape[-1]
    if _use_triton(x):
        out = x.new_empty(total, dim)
        out_lse = lse.new_empty(total)
        _reduce_rows_kernel[(total,)](
            x.contiguous(), lse.contiguous(), order, starts, out, out_lse, dim,
            BLOCK_D=triton.next_power_of_2(dim), BY_LSE=True,
        )
        return out, out_lse
    peak = torch.full((total,), float("-inf"), device=lse.device).scatter_reduce(
        0, rows, lse, "amax", include_self=True
    )
    weight = torch.exp(lse - peak[rows])
    norm = torch.zeros(total, device=lse.device).index_add_(0, rows, weight)
    merged = torch.zeros(total, dim, device=x.device).index_add_(
        0, rows, x.float() * (weight / norm[rows])[:, None]
    )
    return merged.to(x.dtype), peak + norm.log()


def sum_by_destination(
    x: torch.Tensor, rows: torch.Tensor, order: torch.Tensor, starts: torch.Tensor
) -> torch.Tensor:
    """Sum packed rows ``x`` ``[T, D]`` onto their destinations: ``[R, D]`` in ``x.dtype``
    (accumulated in float32)."""
    total, dim = starts.numel() - 1, x.shape[-1]
    if _use_triton(x):
        out = x.new_empty(total, dim)
        _reduce_rows_kernel[(total,)](
            x.contiguous(), x, order, starts, out, out, dim,
            BLOCK_D=triton.next_power_of_2(dim), BY_LSE=False,
        )
        return out
    summed = torch.zeros(total, dim, dtype=torch.float32, device=x.device)
    return summed.index_add_(0, rows, x.float()).to(x.dtype)
