"""Bad input raises ValueError naming the argument and the allowed values."""

import pytest
import torch

from vmoba.attention import VMoBAConfig, backend_names, indexed, resolve_backend, vmoba_attention

GRID = (2, 3, 4)
CONFIG = VMoBAConfig(block=1)


def _qkv(shape=(1, 24, 2, 8), dtype=torch.float32):
    return [torch.ones(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(grid=(2, 3, 5)), r"grid \(2, 3, 5\) has 30 tokens but q has S = 24"),
        (dict(grid=(2, 3)), r"grid must be 3 positive ints"),
        (dict(grid=(2, 0, 4)), r"grid must be 3 positive ints"),
        (dict(block=3), r"block 3 .* is larger than grid"),
        (dict(block=(4, 4)), r"block \(4, 4\) .* is larger than grid"),
        (dict(block=(1, 1, 5)), r"block \(1, 1, 5\) .* is larger than grid"),
        (dict(block=(1, 2, 3, 4)), r"block must be an int .*, a pair .* or a triple"),
        (dict(block=0), r"block must be a positive int \(1D temporal\), got 0"),
        (dict(block="2"), r"block must be an int"),
        (dict(select="top"), r"select must be one of \('topk', 'threshold'\)"),
        (
            dict(scope="global"),
            r"scope must be one of \('query_head', 'head_global', 'block', 'overall'\)",
        ),
        (
            dict(select="topk", topk=2, scope="block"),
            r"scope must be one of \('query_head', 'head_global', 'overall'\) with select='topk'",
        ),
        (dict(select="topk"), r"topk must be an int >= 1 with select='topk', got None"),
        (dict(select="topk", topk=0), r"topk must be an int >= 1"),
        (dict(select="topk", topk=2.0), r"topk must be an int >= 1"),
        (dict(threshold=1.5), r"threshold must be a number in \[0, 1\], got 1.5"),
        (dict(threshold=-0.1), r"threshold must be a number in \[0, 1\]"),
        (
            dict(backend="triton"),
            r"backend must be one of "
            r"\('auto', 'flex', 'gathered', 'indexed', 'reference', 'varlen'\), got 'triton'",
        ),
        (
            dict(backend="chunked"),
            r"backend must be one of \('auto', 'flex', 'gathered', 'indexed', 'reference', "
            r"'varlen'\), got 'chunked'",
        ),
    ],
)
def test_bad_arguments(change, match):
    options = dict(block=1) | change
    grid = options.pop("grid", GRID)
    with pytest.raises(ValueError, match=match):
        vmoba_attention(*_qkv(), grid=grid, config=VMoBAConfig(**options))


def test_bad_tensors():
    q, k, v = _qkv()
    with pytest.raises(
        ValueError, match=r"q must be a 4-D tensor \[B, S, H, D\], got \(24, 2, 8\)"
    ):
        vmoba_attention(q[0], k, v, grid=GRID, config=CONFIG)
    with pytest.raises(ValueError, match=r"k must match q in shape"):
        vmoba_attention(q, k[:, :12], v, grid=GRID, config=CONFIG)
    with pytest.raises(ValueError, match=r"v must match q in shape, dtype and device"):
        vmoba_attention(q, k, v.double(), grid=GRID, config=CONFIG)
    with pytest.raises(ValueError, match=r"q.dtype must be one of \(torch.float16, torch.bfloat16"):
        vmoba_attention(*_qkv(dtype=torch.int64), grid=GRID, config=CONFIG)


def test_registry_names_and_auto_choice(monkeypatch):
    monkeypatch.setattr(indexed, "available_on", lambda device: False)  # a GPU before Hopper
    assert backend_names() == ("auto", "flex", "gathered", "indexed", "reference", "varlen")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, torch.float32, 64).name == "gathered"
    assert resolve_backend("auto", cuda, torch.bfloat16, 128).name == "varlen"
    assert resolve_backend("auto", cuda, torch.bfloat16, 36).name == "gathered"  # varlen: D % 8
    assert resolve_backend("auto", cuda, torch.float32, 128).name == "gathered"
    assert resolve_backend("auto", torch.device("mps"), torch.float32, 64).name == "gathered"
    assert resolve_backend("reference", cpu, torch.bfloat16, 64).name == "reference"
    with pytest.raises(ValueError, match="backend 'indexed' does not support"):
        resolve_backend("indexed", cuda, torch.bfloat16, 128)
    monkeypatch.setattr(indexed, "available_on", lambda device: True)  # Hopper or newer
    assert resolve_backend("auto", cuda, torch.bfloat16, 128).name == "indexed"
    assert resolve_backend("auto", cuda, torch.float16, 16).name == "indexed"
    assert resolve_backend("auto", cuda, torch.bfloat16, 96).name == "varlen"  # not a power of 2
    assert resolve_backend("auto", cuda, torch.bfloat16, 256).name == "varlen"
    with pytest.raises(
        ValueError,
        match=r"backend 'varlen' does not support torch.float32 tensors of head dim 64 on cpu",
    ):
        resolve_backend("varlen", cpu, torch.float32, 64)
