import pytest
import torch
from helpers import INTERPRETED, run_interpreted

from vmoba.attention import selection, threshold_search
from vmoba.attention.selection import SelectionConfig
from vmoba.attention.threshold_search import (
    CANDIDATES,
    triton,
    candidate_masses,
    candidate_masses_torch,
    key_values,
    order_keys,
    search_keep,
)

TAUS = [0.0, 0.1, 0.25, 0.6, 1.0]


def _pools(kind: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[P, M]`` float32 gates of one kind and ``[P, M]`` self flags (~10% per pool)."""
    shape = (4, 777)
    gates = torch.randn(shape, generator=generator)
    if kind == "ties":  # few distinct values: the cut-off falls inside a run of equal gates
        gates = (gates * 2).round() / 2
    elif kind == "constant":
        gates = torch.full(shape, 0.75)
    elif kind == "positive":
        gates = gates.abs() + 3.0
    is_self = torch.rand(shape, generator=generator) < 0.1
    if kind == "self_only":
        is_self[0] = True  # a pool with no other entries
    return gates, is_self


def test_order_keys_sort_like_floats_and_invert():
    values = torch.tensor(
        [-float("inf"), -3.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 2.0, 7e30, float("inf")]
    )
    shuffled = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))]
    keys = order_keys(shuffled)
    assert torch.equal(shuffled[keys.argsort()].abs(), values.abs())
    assert torch.equal(key_values(keys.long()), torch.where(shuffled == 0, 0.0, shuffled))
    assert order_keys(torch.tensor([-0.0])).item() == order_keys(torch.tensor([0.0])).item() == 0


def test_candidate_masses_count_entries_at_or_above_each_key():
    gen = torch.Generator().manual_seed(1)
    gates, is_self = _pools("ties", gen)
    low = gates.amin(-1).double()
    cands = order_keys(gates[:, :CANDIDATES])  # keys of real entries: ties at the boundary
    mass, count = (x.sum(1) for x in candidate_masses(gates, is_self, low, cands))
    for p in range(gates.shape[0]):
        for c in range(CANDIDATES):
            hit = (gates[p] >= key_values(cands[p, c].reshape(1))) & ~is_self[p]
            assert count[p, c].item() == hit.sum().item()
            expected = (gates[p][hit].double() - low[p]).sum()
            assert mass[p, c].item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kind", ["random", "ties", "constant", "positive", "self_only"])
@pytest.mark.parametrize("tau", TAUS)
def test_search_keeps_what_the_sort_keeps(kind, tau):
    gates, is_self = _pools(kind, torch.Generator().manual_seed(2))
    config = SelectionConfig("threshold", "head_global", threshold=tau)
    expected = selection._select_in_pools(gates, is_self, config)
    low, target = selection._threshold_target(gates, is_self, tau)
    assert torch.equal(search_keep(gates, is_self, low, target), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["random", "ties", "positive"])
def test_candidate_masses_kernel_matches_torch(kind):
    gates, is_self = _pools(kind, torch.Generator().manual_seed(3))
    gates, is_self = gates.cuda().repeat(1, 40), is_self.cuda().repeat(1, 40)
    low = gates.amin(-1).double()
    cands = order_keys(gates[:, :: gates.shape[1] // CANDIDATES][:, :CANDIDATES]).contiguous()
    mass, count = (x.sum(1) for x in candidate_masses(gates, is_self, low, cands))
    ref_mass, ref_count = (x.sum(1) for x in candidate_masses_torch(gates, is_self, low, cands))
    assert torch.equal(count.long(), ref_count)
    torch.testing.assert_close(mass, ref_mass, rtol=1e-12, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["random", "ties", "constant", "self_only"])
@pytest.mark.parametrize("tau", TAUS)
def test_search_kernels_keep_what_the_sort_keeps(kind, tau):
    """Pools of ~31K entries: the kernels split each into parts, so tie ranks cross parts."""
    gates, is_self = _pools(kind, torch.Generator().manual_seed(4))
    gates, is_self = gates.repeat(1, 40), is_self.repeat(1, 40)
    config = SelectionConfig("threshold", "head_global", threshold=tau)
    expected = selection._select_in_pools(gates, is_self, config)
    low, target = selection._threshold_target(gates.cuda(), is_self.cuda(), tau)
    assert torch.equal(search_keep(gates.cuda(), is_self.cuda(), low, target).cpu(), expected)


@pytest.mark.skipif(not INTERPRETED, reason="runs under TRITON_INTERPRET=1 (see the last test)")
@pytest.mark.parametrize("kind, tau", [  # every kind and both taus, at the interpreter's pace
    ("random", 0.25), ("ties", 0.0), ("constant", 0.25), ("self_only", 0.0)])
def test_search_kernels_interpreted_keep_what_the_sort_keeps(kind, tau, monkeypatch):
    """The Triton kernels on the CPU: pools of ~6K entries in 2 parts, so ties cross parts."""
    monkeypatch.setattr(threshold_search, "search_available", lambda pools: True)
    gates, is_self = _pools(kind, torch.Generator().manual_seed(4))
    gates, is_self = gates.repeat(1, 8), is_self.repeat(1, 8)
    assert threshold_search._split(*gates.shape)[0] == 2
    config = SelectionConfig("threshold", "head_global", threshold=tau)
    expected = selection._select_in_pools(gates, is_self, config)
    low, target = selection._threshold_target(gates, is_self, tau)
    assert torch.equal(search_keep(gates, is_self, low, target), expected)
    cands = order_keys(gates[:, :: gates.shape[1] // CANDIDATES][:, :CANDIDATES]).contiguous()
    mass, count = (x.sum(1) for x in candidate_masses(gates, is_self, low, cands))
    ref_mass, ref_count = (x.sum(1) for x in candidate_masses_torch(gates, is_self, low, cands))
    assert torch.equal(count.long(), ref_count)
    torch.testing.assert_close(mass, ref_mass, rtol=1e-12, atol=1e-9)


@pytest.mark.skipif(INTERPRETED or triton is None, reason="needs Triton; is the child run")
def test_search_kernels_in_triton_interpreter():
    run_interpreted(__file__, "interpreted", expected=4)
