"""The varlen backend on the CPU: its packing plan, its merges, and the whole backend run on
stand-ins for flash-attn's 2.6 and >= 2.7 varlen functions (the real kernels need CUDA)."""

import types
import zlib
from dataclasses import replace

import pytest
import torch
from helpers import random_qkv, rel_error

from vmoba.attention import (
    Tuning,
    VMoBAConfig,
    block_partition,
    vmoba_attention,
    vmoba_selection,
)
from vmoba.attention import varlen as varlen_module
from vmoba.attention.fa2_varlen import flash_attn_kernels
from vmoba.attention.segment_merge import merge_by_lse_into, rows_by_destination, sum_into
from vmoba.attention.segments import plan_segments


@pytest.mark.parametrize("pairs_at_once", [6, 4, 1], ids=["all", "ragged_groups", "one"])
def test_plan_packs_each_sample_head_block_with_its_queries_in_bounded_chunks(pairs_at_once):
    part = block_partition((5, 7, 6), (2, 3, 4))  # ragged, 18 blocks
    batch, heads, tokens, blocks = 2, 3, 210, part.num_blocks
    keep = torch.rand(batch, heads, tokens, blocks, generator=torch.Generator().manual_seed(0)) < 0.3
    # long videos find the packed rows a few (sample, head) pairs at a time
    plan = plan_segments(
        keep, part, row_budget=150, plan_entries=pairs_at_once * tokens * blocks
    )
    seg = 0
    for b in range(batch):
        for h in range(heads):
            for j in range(blocks):
                queries = keep[b, h, :, j].nonzero().squeeze(1)
                packed = plan.rows[plan.cu_q[seg] : plan.cu_q[seg + 1]]
                assert torch.equal(packed, (b * heads + h) * tokens + queries)
                start = (b * heads + h) * tokens + part.block_offsets[j]
                assert plan.cu_k[seg] == start
                assert plan.cu_k[seg + 1] - plan.cu_k[seg] == part.block_sizes[j]
                seg += 1
    assert plan.max_k == int(part.block_sizes.max())
    # Chunks tile the segments in order, stay within the budget, and bound their rows' targets.
    assert plan.chunks[0].seg0 == 0 and plan.chunks[-1].seg1 == seg and len(plan.chunks) > 4
    for before, after in zip(plan.chunks, plan.chunks[1:]):
        assert before.seg1 == after.seg0 and before.row1 == after.row0
    for c in plan.chunks:
        rows = plan.rows[c.row0 : c.row1]
        assert c.row1 - c.row0 + c.key1 - c.key0 <= 150 or c.seg1 - c.seg0 == 1
        assert c.dst0 <= int(rows.min()) and int(rows.max()) < c.dst1
        assert (c.key0, c.key1) == (int(plan.cu_k[c.seg0]), int(plan.cu_k[c.seg1]))
        counts = plan.cu_q[c.seg0 + 1 : c.seg1 + 1] - plan.cu_q[c.seg0 : c.seg1]
        assert c.max_q == int(counts.max())


def test_merging_in_batches_equals_softmax_over_the_union_of_segments():
    gen = torch.Generator().manual_seed(1)
    scores = [torch.randn(4, 5, generator=gen) * 3 for _ in range(3)]  # 4 queries, 3 key blocks
    values = [torch.randn(5, 8, generator=gen) for _ in range(3)]
    out, lse = torch.zeros(5, 8), torch.full((5,), float("-inf"))  # row 4 never receives rows
    for s, v in zip(scores, values):  # one batch per key block, as the chunks arrive
        merge_by_lse_into(out, lse, s.softmax(-1) @ v, torch.logsumexp(s, -1), torch.arange(4))
    expected = torch.cat(scores, -1).softmax(-1) @ torch.cat(values)
    torch.testing.assert_close(out[:4], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse[:4], torch.logsumexp(torch.cat(scores, -1), -1))
    assert torch.equal(out[4], torch.zeros(8)) and lse[4] == float("-inf")


def test_sum_into_and_csr_order():
    rows = torch.tensor([2, 0, 2, 1, 0, 2])
    order, starts = rows_by_destination(rows, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5] and starts.tolist() == [0, 2, 3, 6, 6]
    out = torch.ones(4, 2)
    sum_into(out, torch.arange(12.0).view(6, 2), rows)
    assert torch.equal(out, torch.tensor([[11.0, 13], [7, 8], [15, 18], [1, 1]]))
    with pytest.raises(ValueError, match="float32"):
        sum_into(out.half(), torch.ones(6, 2), rows)


def _segment_bounds(cu_q, cu_k):
    return zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())


def _fake_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale, causal):
    """What FA2's varlen forward computes, one segment at a time: ``out`` and ``lse [1, T]``."""
    assert dropout_p == 0.0 and not causal and q.shape[1] == 1
    out, lse = torch.empty_like(q), q.new_empty(1, q.shape[0])
    for q0, q1, k0, k1 in _segment_bounds(cu_q, cu_k):
        assert q1 - q0 <= max_q and k1 - k0 <= max_k
        s = q[q0:q1, 0] @ k[k0:k1, 0].T * scale
        out[q0:q1, 0], lse[0, q0:q1] = s.softmax(-1) @ v[k0:k1, 0], s.logsumexp(-1)
    return out, lse


def _fake_backward(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, dropout_p,
                   scale, causal):
    """FA2's varlen backward: probabilities from the given ``lse``, ``delta = rowsum(dout * out)``."""
    for q0, q1, k0, k1 in _segment_bounds(cu_q, cu_k):
        p = torch.exp(q[q0:q1, 0] @ k[k0:k1, 0].T * scale - lse[0, q0:q1, None])
        ds = p * (dout[q0:q1, 0] @ v[k0:k1, 0].T - (dout[q0:q1, 0] * out[q0:q1, 0]).sum(-1, True))
        dv[k0:k1, 0] = p.T @ dout[q0:q1, 0]
        dq[q0:q1, 0] = ds @ k[k0:k1, 0] * scale
        dk[k0:k1, 0] = ds.T @ q[q0:q1, 0] * scale


def _flash_attn_2_6():
    def fwd(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size,
            softcap, alibi_slopes, return_softmax, block_table, leftpad_k=None, seqused_k=None):
        assert window_size == (-1, -1) and softcap == 0.0 and not return_softmax
        out, lse = _fake_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal)
        return out, q, k, v, out, lse, None, None

    def bwd(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, dropout_p,
            softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, rng_state=None):
        assert window_size == (-1, -1) and softcap == 0.0
        _fake_backward(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, dropout_p,
                       softmax_scale, causal)

    return types.SimpleNamespace(_flash_attn_varlen_forward=fwd, _flash_attn_varlen_backward=bwd)


def _flash_attn_2_7():
    def fwd(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal,
            window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
            return_softmax=False, block_table=None, leftpad_k=None, seqused_k=None,
            zero_tensors=False):
        assert (window_size_left, window_size_right) == (-1, -1) and not return_softmax
        out, lse = _fake_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal)
        return out, lse, None, None

    def bwd(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, dropout_p,
            softmax_scale, causal, window_size_left, window_size_right, softcap, alibi_slopes,
            deterministic, rng_state=None, zero_tensors=False):
        assert (window_size_left, window_size_right) == (-1, -1)
        _fake_backward(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, max_q, max_k, dropout_p,
                       softmax_scale, causal)

    return types.SimpleNamespace(
        _flash_attn_varlen_forward=_CustomOp(fwd), _flash_attn_varlen_backward=_CustomOp(bwd)
    )


class _CustomOp:
    """What ``torch.library.custom_op`` makes of a function (flash-attn >= 2.7): a ``(*args,
    **kwargs)`` callable that keeps the function, and so its signature, in ``_init_fn``."""

    def __init__(self, fn):
        self._init_fn = fn

    def __call__(self, *args, **kwargs):
        return self._init_fn(*args, **kwargs)


@pytest.mark.parametrize("api", ["2.6", "2.7"])
@pytest.mark.parametrize("kind,block", [("1d", 2), ("2d", (3, 4)), ("3d", (2, 3, 4))])
def test_varlen_backend_on_flash_attn_apis_matches_reference(api, kind, block, monkeypatch):
    interface = {"2.6": _flash_attn_2_6, "2.7": _flash_attn_2_7}[api]()
    monkeypatch.setattr(varlen_module, "varlen_kernels", lambda: flash_attn_kernels(interface))
    q, k, v = random_qkv(2, 5 * 7 * 6, 3, 16, dtype=torch.float64, seed=zlib.crc32(kind.encode()))
    grad = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grid, config = (5, 7, 6), VMoBAConfig("threshold", "head_global", block=block)
    want = vmoba_attention(q, k, v, grid=grid, config=replace(config, backend="reference"))
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    partition, keep = vmoba_selection(q, k, grid=grid, block=block, config=config)
    tuning = Tuning(row_budget=97)  # many chunks, some splitting a head
    got = varlen_module.varlen_attention(q, k, v, keep, partition, tuning)
    assert rel_error(got, want) < 1e-12
    for g, w in zip(torch.autograd.grad(got, (q, k, v), grad), want_grads):
        assert rel_error(g, w) < 1e-12


def test_unknown_flash_attn_api_is_refused():
    def fwd(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal):
        raise AssertionError

    interface = types.SimpleNamespace(_flash_attn_varlen_forward=fwd, _flash_attn_varlen_backward=fwd)
    with pytest.raises(ImportError, match="unsupported flash-attn API"):
        flash_attn_kernels(interface)
