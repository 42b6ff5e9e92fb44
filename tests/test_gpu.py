"""GPU: every backend that runs on CUDA equals the reference in bf16 / fp16, forward and backward.

Marked ``gpu`` and skipped without CUDA. Tolerance derived per style.md #4: at most twice the error
of plain PyTorch attention in the same dtype (against float64), plus a small floor.
"""

import zlib
from dataclasses import replace

import pytest
import torch
from helpers import AttentionLayer, rel_error, tensors_outside_saved

from vmoba.attention import (
    SelectionConfig,
    Tuning,
    VMoBAConfig,
    backend_names,
    resolve_backend,
    token_mask,
    varlen,
    vmoba_attention,
    vmoba_selection,
)
from vmoba.attention.indexed import indexed_attention
from vmoba.attention.segment_merge import merge_by_lse_into, sum_into

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
SMALL_CHUNKS = Tuning(row_budget=2000)  # the packed backends' segments in many chunks, some
# cutting through a head


def _cuda_backends():
    """Registered backends, other than the reference, that take CUDA bf16 and fp16 tensors."""
    names = []
    for name in backend_names()[1:]:
        try:
            for dtype in (torch.bfloat16, torch.float16):
                resolve_backend(name, torch.device("cuda"), dtype, 64)
        except ValueError:
            continue
        names.append(name)
    return [n for n in names if n != "reference"]


def _inputs(name, dtype):
    """Seeded q, k, v ``[2, 1260, 4, 64]`` (leaves) and an output gradient on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(zlib.crc32(name.encode()))
    q, k, v = (
        torch.randn(2, 1260, 4, 64, device="cuda", generator=gen, dtype=dtype).requires_grad_()
        for _ in range(3)
    )
    return q, k, v, torch.randn(q.shape, device="cuda", generator=gen, dtype=dtype)


def _reference_and_budget(q, k, v, grad, config):
    """The float64 reference's output and q/k/v gradients, and the error each may carry: twice
    that of plain PyTorch attention in q's dtype under the same mask, plus a 1e-3 floor."""
    reference = replace(config, backend="reference")
    exact = vmoba_attention(*(x.double() for x in (q, k, v)), grid=GRID, config=reference)
    exact = (exact, *torch.autograd.grad(exact, (q, k, v), grad.double()))
    partition, keep = vmoba_selection(q, k, grid=GRID, block=config.block, config=config)
    plain = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v)), attn_mask=token_mask(keep, partition)
    ).transpose(1, 2)
    plain = (plain, *torch.autograd.grad(plain, (q, k, v), grad))
    return exact, [2 * rel_error(p, e) + 1e-3 for p, e in zip(plain, exact)]


def _errors(out, q, k, v, grad, exact):
    """Relative errors of ``out`` and its q/k/v gradients against ``exact``."""
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))
    return [rel_error(g, e) for g, e in zip(got, exact)]


@pytest.mark.parametrize("attend", [varlen.varlen_attention, indexed_attention])
def test_packed_backends_save_their_tensors_through_autograd(attend):
    """Activation checkpointing drops what ``save_for_backward`` holds; tensors kept on the
    context instead (plans, orders, tile lists) would stay alive for every layer."""
    q, k, v, _ = _inputs("saved", torch.bfloat16)
    partition, keep = vmoba_selection(q, k, grid=GRID, block=BLOCKS["3d"], config=SelectionConfig())
    assert not tensors_outside_saved(attend(q, k, v, keep, partition, SMALL_CHUNKS).grad_fn)


@pytest.mark.parametrize("backend", _cuda_backends())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("select,scope,topk", MODES)
def test_cuda_backends_match_reference(select, scope, topk, kind, dtype, backend):
    q, k, v, grad = _inputs(f"{select}{scope}{kind}", dtype)
    config = VMoBAConfig(select, scope, 0.25, topk, block=BLOCKS[kind], backend=backend)
    exact, budget = _reference_and_budget(q, k, v, grad, config)
    out = vmoba_attention(q, k, v, grid=GRID, config=config, tuning=SMALL_CHUNKS)
    assert out.dtype == dtype
    errors = _errors(out, q, k, v, grad, exact)
    assert all(e <= b for e, b in zip(errors, budget)), (errors, budget)


@pytest.mark.parametrize("kind", BLOCKS)
def test_flex_compiles_fullgraph_and_matches_eager(kind):
    """The issue's bar: torch.compile(fullgraph=True) with inductor of a module calling the flex
    backend (selection, BlockMask and kernel in one graph), forward and backward."""
    q, k, v, grad = _inputs(f"flex{kind}", torch.bfloat16)
    config = VMoBAConfig("threshold", "head_global", block=BLOCKS[kind], backend="flex")
    layer = AttentionLayer(GRID, config)
    exact, budget = _reference_and_budget(q, k, v, grad, config)
    compiled = torch.compile(layer, fullgraph=True)(q, k, v)
    eager = layer(q, k, v)
    assert rel_error(compiled, eager) <= budget[0]
    for out in (compiled, eager):
        errors = _errors(out, q, k, v, grad, exact)
        assert all(e <= b for e, b in zip(errors, budget)), (errors, budget)


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
        eager = api._gates_and_selection(q, k, partition.on("cuda:0"), config, Tuning())
        assert torch.equal(keep, eager)


@pytest.mark.parametrize("scope", ["head_global", "block", "overall"])
@pytest.mark.parametrize("tau", [0.1, 0.25, 0.6])
def test_threshold_search_on_gpu_equals_cpu_sort(scope, tau):
    """The CUDA threshold search (eager and compiled) keeps what the CPU sort keeps, given the
    same gates; gates rounded to a few values put the cut-off inside runs of ties."""
    from vmoba.attention import block_gates, block_partition, select_blocks

    search = Tuning(search_min_entries=0)  # every pool, small ones too

    gen = torch.Generator(device="cuda").manual_seed(8)
    q, k = (torch.randn(2, 1260, 4, 64, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(2))
    config = SelectionConfig("threshold", scope, tau)
    compiled = torch.compile(select_blocks, dynamic=False)
    for block in BLOCKS.values():
        partition = block_partition(GRID, block)
        gates = block_gates(q, k, partition.on("cuda:0"))
        for g in (gates, (gates * 4).round() / 4):
            expected = select_blocks(g.cpu(), partition, config)
            on_gpu = (g, partition.on("cuda:0"), config, search)
            assert torch.equal(select_blocks(*on_gpu).cpu(), expected)
            assert torch.equal(compiled(*on_gpu).cpu(), expected)
