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
from vmoba.attention import varlen
from vmoba.attention.segment_merge import merge_by_lse_into, sum_into
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


@pytest.fixture(autouse=True)
def _small_varlen_chunks(monkeypatch):
    """Split the varlen backend's segments into many chunks, some cutting through a head."""
    monkeypatch.setattr(varlen, "ROW_BUDGET", 2000)


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
    results = []
    for device in ("cpu", "cuda"):
        out, out_lse = torch.zeros(rows_out, dim, device=device), torch.full((rows_out,), -torch.inf, device=device)
        summed = torch.zeros(rows_out, dim, device=device)
        for part in (slice(0, 3000), slice(3000, total)):  # two batches, as chunks arrive
            args = (x[part].to(device), lse[part].to(device), rows[part].to(device))
            merge_by_lse_into(out, out_lse, *args)
            sum_into(summed, args[0], args[2])
        results.append((out.cpu(), out_lse.cpu(), summed.cpu()))
    for got, want in zip(results[1], results[0]):
        assert rel_error(got, want) < 1e-5


@pytest.mark.parametrize("select,scope,topk", MODES)
def test_compiled_selection_equals_eager(select, scope, topk):
    from vmoba.attention import api

    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k = (torch.randn(2, 1260, 4, 64, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(2))
    config = SelectionConfig(select, scope, 0.25, topk)
    for block in BLOCKS.values():
        partition, keep = vmoba_selection(q, k, grid=GRID, block=block, config=config)
        eager = api._gates_and_selection(q, k, partition.on("cuda:0"), config)
        assert torch.equal(keep, eager)
