"""TextEncoder: tiny offline encoder and the UMT5 ``from_pretrained`` path, all offline on CPU."""

import pytest
import torch
from transformers import ByT5Tokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel

from vmoba.text import TextEncoder

CAPTIONS = ["a cat playing piano", "", "waves crashing on rocks at sunset"]
MAX_LENGTH = 48


def _real_lengths(captions: list[str]) -> list[int]:
    """Token counts under ByT5: one id per UTF-8 byte plus </s>, capped at MAX_LENGTH."""
    return [min(len(c.encode("utf-8")) + 1, MAX_LENGTH) for c in captions]


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return TextEncoder.tiny(dim=32, layers=2, heads=4, max_length=MAX_LENGTH, seed=0)


def test_tiny_shape_and_padding(tiny):
    out = tiny(CAPTIONS)
    assert tiny.out_dim == 32 and tiny.max_length == MAX_LENGTH
    assert out.shape == (len(CAPTIONS), MAX_LENGTH, 32)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    for row, length in zip(out, _real_lengths(CAPTIONS)):
        assert (row[length:] == 0).all(), "padded positions must be exactly zero"
        assert (row[:length].norm(dim=-1) > 0).all(), "real positions must be non-zero"


def test_tiny_truncates_long_captions(tiny):
    out = tiny(["x" * (3 * MAX_LENGTH)])
    assert out.shape == (1, MAX_LENGTH, 32)
    assert (out[0].norm(dim=-1) > 0).all()


def test_tiny_captions_differ(tiny):
    a, b = tiny(["a red car", "a blue car"])
    assert not torch.allclose(a, b)


def test_tiny_is_deterministic_per_seed():
    before = torch.random.get_rng_state()
    first = TextEncoder.tiny(dim=32, max_length=MAX_LENGTH, seed=3)
    second = TextEncoder.tiny(dim=32, max_length=MAX_LENGTH, seed=3)
    other = TextEncoder.tiny(dim=32, max_length=MAX_LENGTH, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before), "global RNG must be untouched"
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(first(CAPTIONS), second(CAPTIONS))
    assert not torch.allclose(first(CAPTIONS), other(CAPTIONS))


def test_tiny_is_frozen_and_stays_in_eval(tiny):
    parent = torch.nn.ModuleDict({"text": tiny, "head": torch.nn.Linear(32, 1)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in tiny.modules())
    assert not any(p.requires_grad for p in tiny.parameters())
    out = tiny(CAPTIONS)
    assert not out.requires_grad and out.grad_fn is None
    # The (non-inference) output can feed trainable layers that save it for backward.
    parent["head"](out).sum().backward()
    assert parent["head"].weight.grad is not None


def test_moves_with_to():
    enc = TextEncoder.tiny(dim=32, max_length=MAX_LENGTH).to(torch.float64)
    out = enc(CAPTIONS)
    assert out.dtype == torch.float64 and out.device == enc.device


def _tiny_umt5(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=2
    )
    torch.manual_seed(0)
    return UMT5EncoderModel(config).eval()


@pytest.fixture(scope="module")
def saved_umt5(tmp_path_factory):
    """A diffusers-style Wan directory (``tokenizer/`` + ``text_encoder/``) with a tiny UMT5."""
    root = tmp_path_factory.mktemp("wan")
    tokenizer = ByT5Tokenizer()
    model = _tiny_umt5(len(tokenizer))
    model.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root, tokenizer, model


def _direct(tokenizer, model, captions, max_length):
    """Reference: run the saved model directly, then zero the padded positions."""
    tokens = tokenizer(
        captions,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return hidden * tokens.attention_mask.unsqueeze(-1)


def test_from_pretrained_pipeline_root(saved_umt5):
    root, tokenizer, model = saved_umt5
    enc = TextEncoder.from_pretrained(root, max_length=MAX_LENGTH)
    assert isinstance(enc.encoder, UMT5EncoderModel)
    assert isinstance(enc.tokenizer, ByT5Tokenizer)
    assert enc.out_dim == 32 and enc.max_length == MAX_LENGTH
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(CAPTIONS)
    assert out.shape == (len(CAPTIONS), MAX_LENGTH, 32)
    assert torch.equal(out, _direct(tokenizer, model, CAPTIONS, MAX_LENGTH))


def test_from_pretrained_single_folder(tmp_path):
    # A UMT5-style Unigram tokenizer built from an in-memory vocab (no download). ByT5 cannot be
    # used here: with a umt5 config.json beside it, transformers 5's AutoTokenizer ignores the
    # saved tokenizer_class and wants a tokenizer.json, which only a "fast" tokenizer writes.
    pieces = ["<pad>", "</s>", "<unk>", *"\u2581abcdefghijklmnopqrstuvwxyz", "\u2581a", "\u2581cat"]
    tokenizer = T5Tokenizer(vocab=[(p, -1.0) for p in pieces], extra_ids=0)
    model = _tiny_umt5(len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    enc = TextEncoder.from_pretrained(str(tmp_path), max_length=16, dtype=torch.float64)
    assert enc.encoder.dtype == torch.float64
    out = enc(CAPTIONS)
    assert out.dtype == torch.float64
    assert torch.equal(out, _direct(tokenizer, model.double(), CAPTIONS, 16))


def test_from_pretrained_missing(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        TextEncoder.from_pretrained(missing)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        TextEncoder.from_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder.from_pretrained(tmp_path)
