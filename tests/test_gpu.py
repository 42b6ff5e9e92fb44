"""GPU: every backend that runs on CUDA equals the reference in bf16 / fp16, forward and backward.

Marked ``gpu`` and skipped without CUDA. Tolerance derived per style.md #4: at most twice the error
of plain PyTorch attention in the same dtype (against float64), plus a small floor.
"""

import zlib

import pytest
import torch
from helpers import rel_error

from vmoba.attention import (
    backend_names,
    resolve_backend,
    token_mask,
    vmoba_attention,
    vmoba_selection,
)
from vmoba.attention.segment_merge import merge_by_lse, rows_by_destination, sum_by_destination
from vmoba.attention.selection import SelectionConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MODES = [
    ("topk", "query_head", 3),
    ("topk", "head_global", 3),
    ("topk", "overall", 3),
    ("threshold", "query_head", None),
    ("threshold", "head_global", None),
    ("threshold", "block", None),
    ("threshold", "overall", None),
]
BLOCKS = {"1d": 3, "2d": (5, 7), "3d": (4, 5, 7)}
GRID = (9, 10, 14)  # ragged for every block kind; S = 1,260


def _cuda_backends(dtype):
    """Registered backends, other than the reference, that take CUDA tensors of ``dtype``."""
    names = []
    for name in backend_names()[1:]:
        try:
            resolve_backend(name, torch.device("cuda"), dtype, 64)
        except ValueError:
            continue
        names.append(name)
    return [n for n in names if n != "reference"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("select,scope,topk", MODES)
def test_cuda_backends_match_reference(select, scope, topk, kind, dtype):
    gen = torch.Generator(device="cuda").manual_seed(zlib.crc32(f"{select}{scope}{kind}".encode()))
    q, k, v = (
        torch.randn(2, 1260, 4, 64, device="cuda", generator=gen, dtype=dtype).requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn(q.shape, device="cuda", generator=gen, dtype=dtype)
    kwargs = dict(grid=GRID, block=BLOCKS[kind], select=select, scope=scope, topk=topk)
    exact = vmoba_attention(*(x.double() for x in (q, k, v)), backend="reference", **kwargs)
    exact_grads = torch.autograd.grad(exact, (q, k, v), grad.double())
    # Plain PyTorch attention in the same dtype, under the same mask, sets the error budget.
    config = SelectionConfig(select, scope, 0.25, topk)
    partition, keep = vmoba_selection(q, k, grid=GRID, block=BLOCKS[kind], config=config)
    plain = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v)), attn_mask=token_mask(keep, partition)
    ).transpose(1, 2)
    plain_grads = torch.autograd.grad(plain, (q, k, v), grad)
    backends = _cuda_backends(dtype)
    assert backends
    for backend in backends:
        out = vmoba_attention(q, k, v, backend=backend, **kwargs)
        assert out.dtype == dtype
        assert rel_error(out, exact) <= 2 * rel_error(plain, exact) + 1e-3, backend
        for got, want, base in zip(
            torch.autograd.grad(out, (q, k, v), grad), exact_grads, plain_grads
        ):
            assert rel_error(got, want) <= 2 * rel_error(base, want) + 1e-3, backend


def test_segment_reduction_kernels_match_the_torch_path():
    gen = torch.Generator().manual_seed(0)
    total, rows_out, dim = 5000, 700, 128
    rows = torch.cat([torch.arange(rows_out), torch.randint(0, rows_out, (total - rows_out,), generator=gen)])
    x = torch.randn(total, dim, generator=gen).to(torch.bfloat16)
    lse = torch.randn(total, generator=gen) * 4
    cpu_plan = rows_by_destination(rows, rows_out)
    gpu_plan = rows_by_destination(rows.cuda(), rows_out)
    merged, merged_lse = merge_by_lse(x.cuda(), lse.cuda(), rows.cuda(), *gpu_plan)
    want, want_lse = merge_by_lse(x.float(), lse, rows, *cpu_plan)
    assert rel_error(merged.cpu(), want) < 4e-3
    assert rel_error(merged_lse.cpu(), want_lse) < 1e-6
    summed = sum_by_destination(x.cuda(), rows.cuda(), *gpu_plan)
    assert rel_error(summed.cpu(), sum_by_destination(x.float(), rows, *cpu_plan)) < 4e-3
