"""The flex backend: its BlockMask is exactly the selection's tile structure, and it computes what
the reference computes (CPU: FlexAttention's eager implementation and its compiled C++ kernel)."""

import shutil
import zlib

import pytest
import torch
from helpers import AttentionLayer, random_qkv, rel_error
from test_attention_exact import BLOCKS, GRIDS, MODES, TOLERANCE
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torch.nn.attention import flex_attention as torch_flex
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vmoba.attention import (
    SelectionConfig,
    VMoBAConfig,
    block_partition,
    indexed,
    kept_density,
    resolve_backend,
    token_mask,
    vmoba_attention,
    vmoba_selection,
)
from vmoba.attention.flex import flex_block_mask, flex_tile_density

TILES = [(16, 16), (32, 16), (16, 24)]  # (query, key) tokens; 24 straddles blocks of every kind


@pytest.fixture
def flex_cpu_backward(monkeypatch):
    """Lift FlexAttention's "no backward on CPU" guard: it exists because the compiled CPU kernel
    has no backward; the eager implementation it also blocks differentiates like on CUDA."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)


def _selection(mode, grid, block, batch=2, heads=3, dim=16, dtype=torch.float64, grad=False):
    """Seeded q, k, v, their partition and keep mask for one test case."""
    select, scope, threshold, topk = mode
    seed = zlib.crc32(repr((mode, grid, block, batch, dtype)).encode())
    tokens = grid[0] * grid[1] * grid[2]
    q, k, v = random_qkv(batch, tokens, heads, dim, dtype=dtype, seed=seed, grad=grad)
    config = SelectionConfig(select, scope, threshold or 0.25, topk)
    partition, keep = vmoba_selection(q, k, grid=grid, block=block, config=config)
    return (q, k, v), partition, keep


def _config(mode, block, backend):
    select, scope, threshold, topk = mode
    return VMoBAConfig(select, scope, threshold or 0.25, topk, block=block, backend=backend)


def _dense_tiles(num_blocks, indices):
    """BlockMask row format back to a ``[B, H, rows, cols]`` bool tile mask."""
    ranks = torch.arange(indices.shape[-1])
    return torch.zeros(indices.shape, dtype=torch.bool).scatter_(
        -1, indices.long(), ranks < num_blocks[..., None]
    )


def _naive_tiles(keep, partition, tile):
    """Partial and full tiles by looking at every tile of the token mask in block order."""
    perm = partition.perm
    mask = token_mask(keep, partition)[:, :, perm][..., perm]  # [B, H, S, S]: fine at test sizes
    tokens = mask.shape[-1]
    rows, cols = range(0, tokens, tile[0]), range(0, tokens, tile[1])
    partial = torch.zeros(*mask.shape[:2], len(rows), len(cols), dtype=torch.bool)
    full = torch.zeros_like(partial)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            region = mask[:, :, r : r + tile[0], c : c + tile[1]].flatten(2)
            full[:, :, i, j] = region.all(-1)
            partial[:, :, i, j] = region.any(-1) & ~full[:, :, i, j]
    return partial, full


@pytest.mark.parametrize("tile", TILES, ids=str)
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m[0]}-{m[1]}")
def test_block_mask_is_the_tile_union_of_the_selection(mode, kind, tile):
    _, partition, keep = _selection(mode, GRIDS["ragged"], BLOCKS[kind])
    mask = flex_block_mask(keep, partition, tile)
    partial, full = _naive_tiles(keep, partition, tile)
    assert torch.equal(_dense_tiles(mask.kv_num_blocks, mask.kv_indices), partial)
    assert torch.equal(_dense_tiles(mask.full_kv_num_blocks, mask.full_kv_indices), full)
    # The query-major copies drive the backward pass (dk, dv).
    assert torch.equal(_dense_tiles(mask.q_num_blocks, mask.q_indices), partial.transpose(-1, -2))
    assert torch.equal(
        _dense_tiles(mask.full_q_num_blocks, mask.full_q_indices), full.transpose(-1, -2)
    )
    assert mask.shape == (*keep.shape[:2], partition.num_tokens, partition.num_tokens)


# Four 1D blocks of 16 tokens (grid 4 x 4 x 4, one frame each; block order = raster order).
# Queries of block 0 keep {0, 2}; of block 1 the first 8 keep {1, 3}, the last 8 {1};
# of block 2 {2}; of block 3 all. Per tile size: (partial, full) key tiles of each query tile.
KNOWN = {
    (16, 8): (
        [[], [6, 7], [], []],
        [[0, 1, 4, 5], [2, 3], [4, 5], [0, 1, 2, 3, 4, 5, 6, 7]],
    ),
    (16, 24): ([[0, 1], [0, 1, 2], [1], []], [[], [], [], [0, 1, 2]]),
    (24, 16): ([[0, 1, 2, 3], [1, 2], []], [[], [], [0, 1, 2, 3]]),
}


def _known_keep():
    keep = torch.zeros(1, 1, 64, 4, dtype=torch.bool)
    keep[..., :16, [0, 2]] = True
    keep[..., 16:32, 1] = True
    keep[..., 16:24, 3] = True
    keep[..., 32:48, 2] = True
    keep[..., 48:, :] = True
    return keep


def _as_lists(tiles):
    return [row.nonzero().squeeze(1).tolist() for row in tiles[0, 0]]


@pytest.mark.parametrize("tile", KNOWN, ids=str)
def test_block_mask_of_a_known_selection(tile):
    partition, keep = block_partition((4, 4, 4), 1), _known_keep()
    mask = flex_block_mask(keep, partition, tile)
    partial, full = KNOWN[tile]
    assert _as_lists(_dense_tiles(mask.kv_num_blocks, mask.kv_indices)) == partial
    assert _as_lists(_dense_tiles(mask.full_kv_num_blocks, mask.full_kv_indices)) == full
    computed = sum(len(p) + len(f) for p, f in zip(partial, full))
    assert flex_tile_density(keep, partition, tile).item() == computed / (
        len(partial) * -(-64 // tile[1])
    )


def test_tile_density_of_single_token_tiles_is_the_kept_density():
    _, partition, keep = _selection(MODES[4], GRIDS["ragged"], BLOCKS["3d"])
    assert flex_tile_density(keep, partition, (1, 1)).item() == pytest.approx(
        kept_density(keep, partition).item(), abs=1e-12
    )


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [t.shape for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def test_block_mask_builds_no_token_by_token_tensor():
    _, partition, keep = _selection(MODES[4], GRIDS["ragged"], BLOCKS["2d"])
    tokens = partition.num_tokens
    with _Shapes() as recorded:
        mask = flex_block_mask(keep, partition, (16, 16))
    assert recorded.shapes
    assert all(sum(n >= tokens for n in shape) <= 1 for shape in recorded.shapes)
    captured = [c.cell_contents for c in mask.mask_mod.__closure__]
    assert all(sum(n >= tokens for n in t.shape) <= 1 for t in captured)


@pytest.mark.usefixtures("flex_cpu_backward")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m[0]}-{m[1]}")
def test_flex_equals_the_reference(mode, kind, dtype):
    grid, block = GRIDS["ragged"], BLOCKS[kind]
    (q, k, v), _, _ = _selection(mode, grid, block, heads=2, dtype=dtype, grad=True)
    expected = vmoba_attention(q, k, v, grid=grid, config=_config(mode, block, "reference"))
    out = vmoba_attention(q, k, v, grid=grid, config=_config(mode, block, "flex"))
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_error(out, expected) < TOLERANCE[dtype]
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, got, want in zip("qkv", grads, torch.autograd.grad(expected, (q, k, v), grad_out)):
        assert rel_error(got, want) < TOLERANCE[dtype], name


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")),
    reason="the compiled CPU FlexAttention kernel needs a C++ compiler",
)
def test_compiled_cpu_kernel_skips_exactly_the_unselected_tiles():
    """The C++ kernel reads the BlockMask (it skips absent tiles and runs no mask_mod on full
    ones), so a wrong tile list would change its output; the eager implementation would not.
    One case: its compile takes 15 to 25 s on a cold inductor cache. Key tiles of 16: the C++
    kernel of torch 2.14 returns wrong outputs for key tiles that are not a multiple of 16 (8, 24)
    even with the tile lists that ``test_block_mask_is_the_tile_union_of_the_selection`` checks; at
    (16, 16) this case has both partial and full tiles."""
    grid, block, tile = GRIDS["ragged"], BLOCKS["3d"], (16, 16)
    (q, k, v), partition, keep = _selection(MODES[1], grid, block, dtype=torch.float32)
    expected = vmoba_attention(q, k, v, grid=grid, config=_config(MODES[1], block, "reference"))
    perm = partition.perm
    blocked = [x[:, perm].transpose(1, 2) for x in (q, k, v)]  # [B, H, S, D], block order
    out = torch.compile(torch_flex.flex_attention, dynamic=False)(
        *blocked, block_mask=flex_block_mask(keep, partition, tile)
    )
    assert rel_error(out.transpose(1, 2)[:, partition.inverse], expected) < 1e-5


def _no_unbacked_shapes(gm, example_inputs):
    """A compile backend that fails on data-dependent shapes, then runs the graph like aot_eager."""
    for node in gm.graph.nodes:
        assert not free_unbacked_symbols(node.meta.get("example_value")), node.format_node()
    return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)


def test_fullgraph_compile_traces_selection_mask_and_attention():
    """No graph break, host sync or data-dependent shape from the gates to the output. (CPU
    inductor cannot lower FlexAttention with in-graph mask buffers, so this traces and runs the
    graph with aot_eager, forward only; tests/test_gpu.py compiles it with inductor.)"""
    torch._dynamo.reset()
    grid, block = GRIDS["ragged"], BLOCKS["3d"]
    (q, k, v), _, _ = _selection(MODES[4], grid, block, dtype=torch.float32)
    layer = AttentionLayer(grid, _config(MODES[4], block, "flex"))
    compiled = torch.compile(layer, fullgraph=True, backend=_no_unbacked_shapes)
    assert rel_error(compiled(q, k, v), layer(q, k, v)) < 1e-6


def test_registry_entry(monkeypatch):
    monkeypatch.setattr(indexed, "available_on", lambda device: False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert resolve_backend("flex", cuda, dtype, 128).name == "flex"
    assert resolve_backend("auto", cuda, torch.bfloat16, 128).name == "varlen"
    assert resolve_backend("auto", cuda, torch.float32, 128).name == "gathered"  # flex: by name
    assert resolve_backend("auto", cpu, torch.float32, 64).name == "gathered"
    for device, dtype, dim in (
        (cuda, torch.float64, 64),
        (cuda, torch.float16, 8),
        (cpu, torch.float16, 64),
    ):
        with pytest.raises(ValueError, match="does not support"):
            resolve_backend("flex", device, dtype, dim)


def test_cuda_flex_calls_raise_past_the_shape_limit_instead_of_running_eagerly(monkeypatch):
    """FlexAttention's eager path materialises S x S scores: on CUDA a call past the compiled
    shape limit must raise, not fall back (checked with dynamo's eager backend on the CPU and a
    limit of 2 graphs); the CPU path (eager by design) has no limit."""
    from vmoba.attention import compile_limits, flex

    monkeypatch.setattr(compile_limits, "COMPILED_SHAPES", 2)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    with flex.shape_limits(torch.device("cuda")):
        double(torch.ones(1)), double(torch.ones(2))  # two graphs: within the limit
        with pytest.raises(Exception, match="(?i)limit"):
            double(torch.ones(3))
    torch._dynamo.reset()
    with flex.shape_limits(torch.device("cpu")):
        for size in (1, 2, 3):  # past dynamo's limit of 1: runs eagerly, no error
            assert double(torch.ones(size)).sum() == 2 * size
    torch._dynamo.reset()
