"""The indexed backend's Triton kernels against the reference, run on the CPU by Triton's
interpreter (``TRITON_INTERPRET=1``, set for a child pytest by the last test). On a GPU,
``tests/test_gpu.py`` covers the backend in bf16/fp16 with every other CUDA backend."""

import pytest
import torch
from helpers import INTERPRETED, random_qkv, rel_error, run_interpreted, tensors_outside_saved

from vmoba.attention import (
    SelectionConfig,
    Tuning,
    VMoBAConfig,
    segment_merge,
    vmoba_attention,
    vmoba_selection,
)
from vmoba.attention.indexed import indexed_attention, triton

MODES = [("threshold", "head_global", None), ("topk", "query_head", 2), ("threshold", "block", None)]
LAYOUTS = {  # (grid, block): ragged for every kind; "long": blocks of 160 and 80 keys, so the
    "1d": ((3, 5, 6), 2),  # kernels loop over several key steps and split blocks into key tiles
    "2d": ((3, 5, 6), (2, 4)),
    "3d": ((3, 5, 6), (2, 2, 4)),
    "long": ((3, 8, 10), 2),
}


@pytest.mark.skipif(not INTERPRETED, reason="runs under TRITON_INTERPRET=1 (see the last test)")
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("select,scope,topk", MODES)
def test_indexed_matches_reference_interpreted(select, scope, topk, kind, monkeypatch):
    monkeypatch.setattr(segment_merge, "kernel_runs", lambda x: True)  # its merge kernel too
    grid, block = LAYOUTS[kind]
    tokens = grid[0] * grid[1] * grid[2]
    q, k, v = random_qkv(2, tokens, 2, 32, seed=3)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    config = VMoBAConfig(select, scope, 0.25, topk, block=block, backend="reference")
    exact = vmoba_attention(*(x.double() for x in (q, k, v)), grid=grid, config=config)
    exact = (exact, *torch.autograd.grad(exact, (q, k, v), grad.double()))
    partition, keep = vmoba_selection(
        q, k, grid=grid, block=block, config=SelectionConfig(select, scope, 0.25, topk)
    )
    tuning = Tuning(row_budget=97)  # many chunks, some splitting a head
    out = indexed_attention(q, k, v, keep, partition, tuning)
    assert not tensors_outside_saved(out.grad_fn)
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, exact):
        assert rel_error(g, e) < 1e-5, name


@pytest.mark.skipif(INTERPRETED or triton is None, reason="needs Triton; is the child run")
def test_indexed_kernels_in_triton_interpreter():
    run_interpreted(__file__, "interpreted", expected=12)
