import pytest
import torch
from naive_vmoba import naive_blocks

from vmoba.attention import block_partition, layer_kind

CASES = [
    ((4, 6, 8), 2),
    ((4, 6, 8), (3, 4)),
    ((4, 6, 8), (2, 3, 4)),
    ((5, 7, 6), 2),
    ((5, 7, 6), (3, 4)),
    ((5, 7, 6), (2, 3, 4)),
    ((3, 5, 7), 3),
    ((3, 5, 7), (5, 7)),
    ((3, 5, 7), (1, 1, 1)),
    ((24, 36, 64), (8, 12, 8)),
]


@pytest.mark.parametrize("grid,block", CASES)
def test_blocks_match_naive_enumeration(grid, block):
    part = block_partition(grid, block)
    expected = naive_blocks(grid, block)
    assert part.num_blocks == len(expected)
    assert part.block_sizes.tolist() == [len(b) for b in expected]
    for j, tokens in enumerate(expected):
        lo, hi = part.block_offsets[j].item(), part.block_offsets[j + 1].item()
        assert part.perm[lo:hi].tolist() == tokens  # contiguous, raster order inside the block
        assert (part.block_index[tokens] == j).all()


@pytest.mark.parametrize("grid,block", CASES)
def test_permutation_round_trips(grid, block):
    part = block_partition(grid, block)
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, tokens, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[:, part.perm][:, part.inverse], x)
    assert torch.equal(part.perm[part.inverse], torch.arange(tokens))
    assert torch.equal(part.block_index[part.perm], part.block_index.sort().values)


def test_layer_kinds_and_cuboid_shapes():
    assert [layer_kind(b) for b in (3, (6, 8), (8, 12, 8))] == ["1d", "2d", "3d"]
    assert block_partition((24, 36, 64), 3).block_shape == (3, 36, 64)
    assert block_partition((24, 36, 64), (6, 8)).block_shape == (24, 6, 8)
    assert [block_partition((24, 36, 64), b).num_blocks for b in (3, (6, 8), (8, 12, 8))] == [
        8,
        48,
        72,
    ]


def test_ragged_edge_block_is_smaller():
    part = block_partition((5, 2, 2), 2)  # frames [0, 2), [2, 4), [4, 5)
    assert part.block_sizes.tolist() == [8, 8, 4]


def test_partitions_first_built_in_inference_mode_still_serve_autograd():
    with torch.inference_mode():
        part = block_partition((3, 4, 5), (2, 2, 5))
    assert not part.block_index.is_inference()
    x = torch.randn(60, requires_grad=True)
    x[part.perm].sum().backward()  # an inference tensor here would raise
