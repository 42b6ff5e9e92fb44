"""Ulysses sequence parallelism on 2 (and 4) gloo processes equals one process, forward and
backward: the attention alone, and the whole tiny DiT under DDP. One GPU test (2 GPUs, NCCL):
the CUDA backends under Ulysses, within the error of one GPU's bf16 result."""

import copy
import functools
import re

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import random_qkv, rel_error, run_distributed
from torch.nn.parallel import DistributedDataParallel

from vmoba.attention import (
    SelectionConfig,
    VMoBAConfig,
    reference_attention,
    vmoba_attention,
    vmoba_selection,
)
from vmoba.model import TINY_WAN, VideoDiT, VMoBASettings, load_transformer
from vmoba.parallel.ulysses import (
    gather_sequence,
    heads_to_sequence,
    sequence_to_heads,
    shard_sequence,
    ulysses_attention,
)

GRIDS = [(6, 4, 4), (5, 4, 6)]  # even and ragged blocks; 96 and 120 tokens
BLOCKS = {"1d": 2, "2d": (3, 3), "3d": (2, 3, 2)}
MODES = [
    dict(select="threshold", scope="head_global", threshold=0.25),
    dict(select="topk", scope="query_head", topk=2),
]


def _attention_worker(rank, world_size):
    group = dist.group.WORLD
    for grid in GRIDS:
        tokens = grid[0] * grid[1] * grid[2]
        for kind, block in BLOCKS.items():
            for mode in MODES:
                case = f"grid {grid}, {kind}, {mode}"
                config = VMoBAConfig(block=block, **mode)
                attend = functools.partial(vmoba_attention, grid=grid, config=config)
                q, k, v = random_qkv(2, tokens, 4, 8, seed=tokens)
                expected = attend(q, k, v)
                grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
                expected.backward(grad_out)
                local = [shard_sequence(x.detach(), group).requires_grad_() for x in (q, k, v)]
                out = ulysses_attention(*local, attend, group)
                out.backward(shard_sequence(grad_out, group))
                assert rel_error(gather_sequence(out, group), expected) < 1e-6, case
                for name, full, part in zip("qkv", (q, k, v), local):
                    error = rel_error(gather_sequence(part.grad, group), full.grad)
                    assert error < 1e-6, f"d{name}, {case}"


def test_ulysses_vmoba_attention_equals_one_process():
    run_distributed(_attention_worker, 2)


def _collectives_worker(rank, world_size):
    group = dist.group.WORLD
    x = torch.randn(2, 6, 4, 3, generator=torch.Generator().manual_seed(0))  # [B, S, H, D]
    local = shard_sequence(x, group)
    heads = sequence_to_heads(local, group)
    assert torch.equal(heads, x[:, :, 2 * rank : 2 * rank + 2])  # rank r: heads [2r, 2r + 2)
    assert torch.equal(heads_to_sequence(heads, group), local)
    assert torch.equal(gather_sequence(local, group), x)
    with pytest.raises(ValueError, match=r"number of attention heads \(3\) must be divisible"):
        sequence_to_heads(local[:, :, :3], group)
    with pytest.raises(ValueError, match=r"number of tokens \(5\) must be divisible"):
        shard_sequence(x[:, :5], group)


def test_all_to_all_moves_token_chunks_to_head_chunks():
    run_distributed(_collectives_worker, 2)


SETTINGS = VMoBASettings(block_1d=1, block_2d=[4, 4], block_3d=[2, 4, 4])  # 4, 4, 8 blocks


def _dit_inputs(batch):
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(batch, 3, 4, 16, 16, generator=gen)  # grid 4 x 8 x 8 = 256 tokens
    timestep = torch.tensor([150.0, 800.0])[:batch]
    text = torch.randn(batch, 12, 64, generator=gen)
    return video, timestep, text, torch.randn(video.shape, generator=gen)


def _loss_and_grads(dit, video, timestep, text, target):
    loss = F.mse_loss(dit(video, timestep, text), target)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in dit.named_parameters() if p.grad is not None}


def _dit_worker(rank, world_size, sequence_parallel, checkpointing):
    """Groups of ``sequence_parallel`` consecutive ranks; group g trains on sample g under DDP
    over all ranks. Rank 0 compares with one process training on every group's sample."""
    torch.manual_seed(0)
    dit = VideoDiT(load_transformer(), SETTINGS)
    reference = copy.deepcopy(dit)
    group, _ = dist.new_subgroups(sequence_parallel)
    dit.enable_sequence_parallel(group)
    if checkpointing:  # the backward recomputes each block, all-to-alls and token split included
        dit.transformer.enable_gradient_checkpointing()
    replicas = world_size // sequence_parallel
    mine = slice(rank // sequence_parallel, rank // sequence_parallel + 1)
    video, timestep, text, target = (x[mine] for x in _dit_inputs(replicas))
    ddp = DistributedDataParallel(dit)  # kept alive: its reducer averages in backward
    loss = F.mse_loss(ddp(video, timestep, text), target)
    loss.backward()
    grads = {n: p.grad for n, p in dit.named_parameters() if p.grad is not None}
    losses = torch.stack([torch.empty_like(loss) for _ in range(world_size)])
    dist.all_gather(list(losses.unbind()), loss.detach())
    per_group = losses.view(replicas, sequence_parallel)
    assert (per_group == per_group[:, :1]).all()  # a group's ranks computed the same loss
    if rank == 0:
        expected_loss, expected = _loss_and_grads(reference, *_dit_inputs(replicas))
        assert rel_error(per_group[:, 0].mean(), expected_loss) < 1e-6
        assert grads.keys() == expected.keys()
        errors = {name: rel_error(grads[name], expected[name]) for name in expected}
        assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize(
    "world_size,sequence_parallel,checkpointing",
    [(2, 2, False), (4, 2, True)],
    ids=["sp2", "sp2xdp2-checkpointing"],
)
def test_ulysses_dit_loss_and_gradients_equal_one_process(
    world_size, sequence_parallel, checkpointing
):
    run_distributed(_dit_worker, world_size, sequence_parallel, checkpointing)


def _refusals_worker(rank, world_size):
    group = dist.group.WORLD
    for scope in ("overall", "block"):
        dit = VideoDiT(load_transformer(), VMoBASettings(scope=scope))
        expected = re.escape(f"pools gates across heads), got '{scope}'")
        with pytest.raises(ValueError, match=expected):
            dit.enable_sequence_parallel(group)
    full = VideoDiT(load_transformer(), VMoBASettings(mode="full"))
    with pytest.raises(ValueError, match="needs attention='vmoba'"):
        full.enable_sequence_parallel(group)
    three_heads = load_transformer({**TINY_WAN, "num_attention_heads": 3})
    with pytest.raises(ValueError, match=r"num_attention_heads \(3\) must be divisible"):
        VideoDiT(three_heads, VMoBASettings()).enable_sequence_parallel(group)
    dit = VideoDiT(load_transformer(), VMoBASettings())
    dit.enable_sequence_parallel(group)
    dit.enable_sequence_parallel(group)  # again with the same group: nothing changes
    assert (dit.sequence_size, dit.sequence_rank) == (2, rank)
    video, timestep, text, _ = _dit_inputs(1)
    with pytest.raises(ValueError, match=r"number of tokens \(9\) must be divisible"):
        dit(video[:, :, :3, :2, :6], timestep, text)  # grid 3 x 1 x 3


def test_sequence_parallelism_refuses_what_it_cannot_split_exactly():
    run_distributed(_refusals_worker, 2)


def _forward_backward(attend, inputs, grad_out):
    """``[out, dq, dk, dv]`` of ``attend(*inputs)`` for the upstream gradient ``grad_out``."""
    inputs = [x.detach().requires_grad_() for x in inputs]
    out = attend(*inputs)
    out.backward(grad_out.to(out.dtype))
    return [out, *(x.grad for x in inputs)]


def _gpu_attention_worker(rank, world_size):
    """bf16 on the GPU: Ulysses' output and gradients are as close to the float64 reference (of
    one GPU's selection) as one GPU's are: within twice its error plus a floor."""
    group, device = dist.group.WORLD, torch.device("cuda", rank)
    grid, block = (4, 24, 32), (6, 8)  # 3,072 tokens, 16 blocks
    mode = dict(select="threshold", scope="head_global", threshold=0.25)
    attend = functools.partial(vmoba_attention, grid=grid, config=VMoBAConfig(block=block, **mode))
    qkv = [x.detach().to(device, torch.bfloat16) for x in random_qkv(1, 3072, 12, 128)]
    grad_out = torch.randn(qkv[0].shape, generator=torch.Generator().manual_seed(1)).to(device)
    partition, keep = vmoba_selection(
        *qkv[:2], grid=grid, block=block, config=SelectionConfig(**mode)
    )
    masked = functools.partial(reference_attention, keep=keep, partition=partition)
    reference = _forward_backward(masked, [x.double() for x in qkv], grad_out)
    single = _forward_backward(attend, qkv, grad_out)
    local = _forward_backward(
        functools.partial(ulysses_attention, attend=attend, group=group),
        [shard_sequence(x, group) for x in qkv],
        shard_sequence(grad_out, group),
    )
    for name, expected, one, part in zip(["out", "dq", "dk", "dv"], reference, single, local):
        bound = 2 * rel_error(one, expected) + 1e-3
        assert rel_error(gather_sequence(part, group), expected) <= bound, name


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ulysses_cuda_backends_on_two_gpus():
    run_distributed(_gpu_attention_worker, 2, backend="nccl")
