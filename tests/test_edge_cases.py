"""Edge cases of the selection rules, each with its defined behaviour."""

import pytest
import torch
from helpers import random_qkv, rel_error

from vmoba.attention import (
    SelectionConfig,
    VMoBAConfig,
    block_gates,
    block_partition,
    select_blocks,
    self_block_mask,
    vmoba_attention,
)

GRID, TOKENS = (5, 7, 6), 210
ALL_MODES = [
    dict(select="topk", scope=scope, topk=2) for scope in ("query_head", "head_global", "overall")
] + [
    dict(select="threshold", scope=scope)
    for scope in ("query_head", "head_global", "block", "overall")
]


def _dense(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v))
    ).transpose(1, 2)


def _keep(q, k, block, **mode):
    part = block_partition(GRID, block)
    return part, select_blocks(block_gates(q, k, part), part, SelectionConfig(**mode))


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: f"{m['select']}-{m['scope']}")
@pytest.mark.parametrize("block", [5, (7, 6), (5, 7, 6)])
def test_single_block_is_dense_attention(mode, block):
    q, k, v = random_qkv(2, TOKENS, 3, 16, seed=1, grad=False)
    out = vmoba_attention(q, k, v, grid=GRID, config=VMoBAConfig(block=block, **mode))
    assert rel_error(out, _dense(q, k, v)) < 1e-6


@pytest.mark.parametrize("scope", ["query_head", "head_global", "overall"])
@pytest.mark.parametrize("topk", [18, 19, 100])
def test_topk_at_least_number_of_blocks_is_dense(scope, topk):
    q, k, v = random_qkv(2, TOKENS, 3, 16, seed=2, grad=False)
    _, keep = _keep(q, k, (2, 3, 4), select="topk", scope=scope, topk=topk)  # 18 blocks
    assert keep.all()
    config = VMoBAConfig("topk", scope, topk=topk, block=(2, 3, 4))
    out = vmoba_attention(q, k, v, grid=GRID, config=config)
    assert rel_error(out, _dense(q, k, v)) < 1e-6


@pytest.mark.parametrize("scope", ["query_head", "head_global", "overall"])
def test_topk_one_is_self_block_only(scope):
    q, k, v = random_qkv(2, TOKENS, 3, 16, seed=3, grad=False)
    part, keep = _keep(q, k, 2, select="topk", scope=scope, topk=1)
    assert torch.equal(keep, self_block_mask(part).expand_as(keep))
    config = VMoBAConfig("topk", scope, topk=1, block=2)
    out = vmoba_attention(q, k, v, grid=GRID, config=config)
    for j in range(part.num_blocks):  # block-diagonal attention: each frame block alone
        ids = part.perm[part.block_offsets[j] : part.block_offsets[j + 1]]
        assert rel_error(out[:, ids], _dense(q[:, ids], k[:, ids], v[:, ids])) < 1e-6


@pytest.mark.parametrize("scope", ["query_head", "head_global", "block", "overall"])
def test_threshold_zero_keeps_self_plus_exactly_one_other_entry_per_pool(scope):
    q, k, _ = random_qkv(2, TOKENS, 3, 16, seed=4, grad=False)
    part, keep = _keep(q, k, (2, 3, 4), select="threshold", scope=scope, threshold=0.0)
    others = keep & ~self_block_mask(part)
    per_pool = {
        "query_head": others.sum(-1),
        "head_global": others.sum((2, 3)),
        "block": others.sum((1, 2)),
        "overall": others.sum((1, 2, 3)),
    }[scope]
    assert (per_pool == 1).all()


@pytest.mark.parametrize("scope", ["query_head", "head_global", "block", "overall"])
def test_threshold_one_is_dense(scope):
    q, k, v = random_qkv(2, TOKENS, 3, 16, seed=5, grad=False)
    _, keep = _keep(q, k, (2, 3, 4), select="threshold", scope=scope, threshold=1.0)
    assert keep.all()


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: f"{m['select']}-{m['scope']}")
def test_samples_are_selected_independently(mode):
    q, k, v = random_qkv(3, TOKENS, 2, 16, seed=6, grad=False)
    order = torch.tensor([2, 0, 1])
    config = VMoBAConfig(block=(2, 3, 4), **mode)
    out = vmoba_attention(q, k, v, grid=GRID, config=config)
    shuffled = vmoba_attention(q[order], k[order], v[order], grid=GRID, config=config)
    assert torch.equal(shuffled, out[order])
    alone = vmoba_attention(q[:1], k[:1], v[:1], grid=GRID, config=config)
    assert torch.equal(alone, out[:1])


def test_cpu_output_and_gradients_are_bitwise_deterministic():
    def run():
        q, k, v = random_qkv(2, TOKENS, 3, 32, seed=7)
        out = vmoba_attention(q, k, v, grid=GRID, config=VMoBAConfig(block=(3, 4)))
        out.square().sum().backward()
        return out, q.grad, k.grad, v.grad

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_keep_their_dtype(dtype):
    q, k, v = random_qkv(1, TOKENS, 2, 16, seed=8, grad=False)
    config = VMoBAConfig(block=(3, 4))
    out = vmoba_attention(q.to(dtype), k.to(dtype), v.to(dtype), grid=GRID, config=config)
    reference = vmoba_attention(q, k, v, grid=GRID, config=config)
    assert out.dtype == dtype
    assert rel_error(out, reference) < 1e-2


@pytest.mark.parametrize("backend", ["gathered", "reference"])
def test_cpu_backends_under_bf16_autocast(backend):
    """What a CPU ``bf16-mixed`` run gives VMoBA: bf16 q, k, v (from autocast linears) inside an
    autocast region. Forward and backward equal float64 attention on the same bf16 inputs to bf16
    rounding (the backends compute in float32)."""
    q, k, v = (x.bfloat16().detach().requires_grad_() for x in random_qkv(1, TOKENS, 2, 16, seed=5))
    mode = dict(select="topk", scope="query_head", topk=3, block=(2, 3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vmoba_attention(q, k, v, grid=GRID, config=VMoBAConfig(**mode, backend=backend))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    got = (out, *torch.autograd.grad(out, (q, k, v), grad.bfloat16()))
    exact_inputs = [x.double().detach().requires_grad_() for x in (q, k, v)]
    exact = vmoba_attention(
        *exact_inputs, grid=GRID, config=VMoBAConfig(**mode, backend="reference")
    )
    exact = (exact, *torch.autograd.grad(exact, exact_inputs, grad.bfloat16().double()))
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, exact):
        assert g.dtype == torch.bfloat16, name
        assert rel_error(g, e) < 1e-2, name
