import pytest
import torch
from helpers import random_qkv
from naive_vmoba import naive_block_of, naive_blocks, naive_keep

from vmoba.attention import (
    SelectionConfig,
    Tuning,
    block_gates,
    block_partition,
    kept_density,
    reference_select_blocks,
    select_blocks,
    vmoba_selection,
)
from vmoba.attention import api, selection

MODES = [
    ("topk", "query_head", 0.25, 2),
    ("topk", "query_head", 0.25, 4),
    ("topk", "head_global", 0.25, 2),
    ("topk", "overall", 0.25, 3),
    ("threshold", "query_head", 0.25, None),
    ("threshold", "head_global", 0.25, None),
    ("threshold", "head_global", 0.6, None),
    ("threshold", "block", 0.25, None),
    ("threshold", "overall", 0.25, None),
]
GRIDS = [(6, 6, 8), (5, 7, 6)]
BLOCKS = [2, (3, 4), (2, 3, 4)]


@pytest.mark.parametrize("ranking", ["sort", "sort_pool_groups", "search"])
@pytest.mark.parametrize("select,scope,threshold,topk", MODES)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("block", BLOCKS)
def test_selection_matches_naive(select, scope, threshold, topk, grid, block, ranking, monkeypatch):
    tuning = Tuning()
    if ranking == "sort_pool_groups":  # rank a few pools at a time, as long videos do
        tuning = Tuning(pool_entries=500)
    elif ranking == "search":  # the CUDA path for large threshold pools, with its torch masses
        if select != "threshold":
            pytest.skip("top-k always sorts")
        monkeypatch.setattr(selection, "search_available", lambda pools: True)
        tuning = Tuning(search_min_entries=0)
    tokens = grid[0] * grid[1] * grid[2]
    q, k, _ = random_qkv(2, tokens, 3, 16, seed=11, grad=False)
    part = block_partition(grid, block)
    gates = block_gates(q, k, part)
    config = SelectionConfig(select, scope, threshold, topk)
    keep = select_blocks(gates, part, config, tuning)
    blocks = naive_blocks(grid, block)
    expected = naive_keep(gates, naive_block_of(blocks), select, scope, threshold, topk)
    assert torch.equal(keep, expected)
    sizes = torch.tensor([len(b) for b in blocks], dtype=torch.float64)
    density = (expected.double() * sizes).sum() / (2 * 3 * tokens * tokens)
    assert kept_density(keep, part).item() == pytest.approx(density.item(), rel=1e-12)


@pytest.mark.parametrize("select,scope,threshold,topk", MODES)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("block", BLOCKS)
def test_plain_selection_equals_the_optimised_one_and_the_oracle(
    select, scope, threshold, topk, grid, block
):
    """``reference_select_blocks`` (one pool at a time) keeps what ``select_blocks`` (batched
    sort, pools in groups) and the tests' oracle keep, in float32 and float64."""
    tokens = grid[0] * grid[1] * grid[2]
    q, k, _ = random_qkv(2, tokens, 3, 16, seed=13, grad=False)
    part = block_partition(grid, block)
    config = SelectionConfig(select, scope, threshold, topk)
    block_of = naive_block_of(naive_blocks(grid, block))
    for gates in (block_gates(q, k, part), block_gates(q.double(), k.double(), part)):
        expected = naive_keep(gates, block_of, select, scope, threshold, topk)
        assert torch.equal(reference_select_blocks(gates, part, config), expected)
        assert torch.equal(select_blocks(gates, part, config), expected)
        assert torch.equal(select_blocks(gates, part, config, Tuning(pool_entries=500)), expected)


def test_topk_head_global_keeps_k_blocks_per_query_on_average():
    grid, block = (4, 6, 8), (2, 3, 4)
    q, k, _ = random_qkv(1, 192, 2, 16, seed=5, grad=False)
    part = block_partition(grid, block)
    keep = select_blocks(
        block_gates(q, k, part), part, SelectionConfig("topk", "head_global", topk=3)
    )
    assert keep.sum(dim=(2, 3)).tolist() == [[3 * 192, 3 * 192]]
    assert keep.sum(-1).min() >= 1 and keep.sum(-1).max() > 3  # some queries get many blocks


@pytest.mark.parametrize("heads_per_group", [1, 2])
@pytest.mark.parametrize("select,scope,threshold,topk", MODES)
def test_selection_in_head_groups_matches_naive(select, scope, threshold, topk, heads_per_group):
    """Long videos select in groups of heads (3 heads: groups of 1, or of 2 and 1); the mask is
    the same, and scopes whose pools span heads are never split."""
    grid, block = (5, 7, 6), (2, 3, 4)
    tokens = grid[0] * grid[1] * grid[2]
    part = block_partition(grid, block)
    tuning = Tuning(selection_entries=heads_per_group * 2 * tokens * part.num_blocks)
    groups = api.head_groups(2, tokens, 3, part.num_blocks, scope, tuning.selection_entries)
    split = scope in ("query_head", "head_global")
    assert len(groups) == ((3 + heads_per_group - 1) // heads_per_group if split else 1)
    q, k, _ = random_qkv(2, tokens, 3, 16, seed=12, grad=False)
    config = SelectionConfig(select, scope, threshold, topk)
    _, keep = vmoba_selection(q, k, grid=grid, block=block, config=config, tuning=tuning)
    gates = block_gates(q, k, part)
    blocks = naive_blocks(grid, block)
    assert torch.equal(
        keep, naive_keep(gates, naive_block_of(blocks), select, scope, threshold, topk)
    )


def test_compiled_selection_meets_many_shapes_without_falling_back(monkeypatch):
    """Compiled selection (CUDA's path, here with dynamo's eager backend on the CPU) compiles a
    graph for each of ten layer shapes: dynamo's default limit (8) would run the last eagerly."""
    from vmoba.attention import api

    torch._dynamo.reset()
    monkeypatch.setattr(api, "_compiles", lambda q, tuning: True)
    compiled = torch.compile(api._gates_and_selection, backend="eager", dynamic=False)
    monkeypatch.setattr(api, "_compiled_gates_and_selection", lambda: compiled)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    config = SelectionConfig("threshold", "head_global", 0.25)
    for frames in range(2, 12):  # ten token grids
        q, k = (torch.randn(1, frames * 16, 2, 8) for _ in range(2))
        vmoba_selection(q, k, grid=(frames, 4, 4), block=(2, 2), config=config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 10
    torch._dynamo.reset()
