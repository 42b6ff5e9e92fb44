"""The Wan wiring: VMoBA processors in attn1, exact dense fallback, layer-kind cycle."""

import copy

import pytest
import torch
from helpers import rel_error

from vmoba.model import VideoDiT, VMoBASettings, load_transformer


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return load_transformer()  # tiny random Wan 2.1 transformer, 3 layers


def _inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(2, 3, 8, 32, 32, generator=gen)  # grid 8 x 16 x 16 = 2,048 tokens
    return video, torch.tensor([150.0, 800.0]), torch.randn(2, 12, 64, generator=gen)


def test_full_attention_keeps_diffusers_processor(wan):
    dit = VideoDiT(copy.deepcopy(wan), VMoBASettings(mode="full"))
    assert dit.processors == []
    assert all(
        type(b.attn1.processor).__name__ == "WanAttnProcessor" for b in dit.transformer.blocks
    )
    stock = wan(*_inputs(), return_dict=False)[0]
    assert torch.equal(dit(*_inputs()), stock)


def test_dense_mode_equals_diffusers_processor_exactly(wan):
    dit = VideoDiT(copy.deepcopy(wan), VMoBASettings())
    stock = wan(*_inputs(), return_dict=False)[0]
    with dit.dense_attention():
        dense = dit(*_inputs())
    assert torch.equal(dense, stock)
    assert not any(p.dense for p in dit.processors)  # the context restores VMoBA
    assert rel_error(dit(*_inputs()), stock) > 1e-3  # VMoBA really is sparse here


def test_vmoba_with_every_block_kept_equals_dense(wan):
    settings = VMoBASettings(select="topk", scope="query_head", topk=[4, 16, 16])  # k = blocks
    dit = VideoDiT(copy.deepcopy(wan), settings)
    stock = wan(*_inputs(), return_dict=False)[0]
    assert rel_error(dit(*_inputs()), stock) < 1e-5
    assert all(d.item() == 1.0 for d in dit.densities().values())


def test_layers_cycle_1d_2d_3d_with_their_settings(wan):
    settings = VMoBASettings(select="topk", scope="query_head", topk=[2, 3, 4], block_2d=[4, 8])
    dit = VideoDiT(copy.deepcopy(wan), settings)
    assert [p.kind for p in dit.processors] == ["1d", "2d", "3d"]
    assert [p.config.block for p in dit.processors] == [2, (4, 8), (2, 8, 8)]
    assert [p.config.topk for p in dit.processors] == [2, 3, 4]
    dit(*_inputs())
    assert dit.processors[0].grid == (8, 16, 16)
    densities = dit.densities()
    assert densities["1d"].item() == pytest.approx(2 / 4)  # top-2 of 4 equal frame blocks
    assert densities["2d"].item() == pytest.approx(3 / 8)
    assert 0 < densities["3d"].item() <= 4 / 16 + 1e-6


def test_gradients_reach_every_trainable_parameter(wan):
    dit = VideoDiT(copy.deepcopy(wan), VMoBASettings())
    dit(*_inputs()).square().mean().backward()
    missing = [n for n, p in dit.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_load_transformer_round_trips_save_pretrained(wan, tmp_path):
    wan.save_pretrained(tmp_path / "transformer")
    loaded = load_transformer(pretrained_path=str(tmp_path))
    assert torch.equal(
        loaded(*_inputs(), return_dict=False)[0], wan(*_inputs(), return_dict=False)[0]
    )
    with pytest.raises(FileNotFoundError, match="no Wan transformer"):
        load_transformer(pretrained_path=str(tmp_path / "missing"))


def test_gradient_checkpointing_gives_the_same_gradients(wan):
    grads = []
    for checkpointing in (False, True):
        dit = VideoDiT(copy.deepcopy(wan), VMoBASettings())
        if checkpointing:
            dit.transformer.enable_gradient_checkpointing()
        dit(*_inputs()).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in dit.parameters() if p.grad is not None]))
    assert rel_error(grads[1], grads[0]) < 1e-6
