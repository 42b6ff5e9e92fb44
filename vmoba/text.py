"""Frozen text encoder producing the DiT's text conditioning ``[B, L, text_dim]``.

Wan 2.1 conditions on UMT5-XXL embeddings (``TextEncoder.from_pretrained``). For CPU runs with no
downloaded files, ``TextEncoder.tiny`` pairs the vocab-free byte-level ByT5 tokenizer with a small,
seeded, randomly initialised T5 encoder behind the same interface.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    ByT5Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5EncoderModel,
    UMT5EncoderModel,
)

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


class TextEncoder(torch.nn.Module):
    """Tokenizer + frozen encoder: ``list[str]`` (length B) -> ``[B, max_length, out_dim]``.

    Embeddings at padded positions are zero, as in Wan's pipeline (which trims each caption to its
    true length and zero-pads back to ``max_length``). The encoder is never trained: its parameters
    do not require grad and it stays in eval mode even when a parent module calls ``.train()``.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, encoder: PreTrainedModel, max_length: int
    ) -> None:
        """Wrap ``tokenizer`` and ``encoder`` (any model returning ``last_hidden_state``)."""
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_length = max_length
        self.encoder.requires_grad_(False)
        self.train(False)

    @classmethod
    def tiny(
        cls,
        *,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 64,
        seed: int = 0,
    ) -> TextEncoder:
        """ByT5 tokenizer + random T5 encoder of width ``dim``, bitwise-reproducible from ``seed``."""
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        tokenizer = ByT5Tokenizer()
        config = T5Config(
            # len() rather than .vocab_size: ByT5's vocab_size counts only the 256 bytes, but ids
            # are offset by 3 special tokens and followed by 125 <extra_id_*> tokens (384 in all).
            vocab_size=len(tokenizer),
            d_model=dim,
            d_ff=2 * dim,
            num_heads=heads,
            d_kv=dim // heads,
            num_layers=layers,
        )
        # T5's weight init draws from the global RNG; fork it so callers' random streams are
        # untouched. devices=[] keeps CUDA RNG states out of it (and avoids initialising CUDA).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = T5EncoderModel(config)
        return cls(tokenizer, encoder, max_length)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        max_length: int = 512,
        dtype: torch.dtype = torch.float32,
    ) -> TextEncoder:
        """Load a UMT5 encoder and its tokenizer from a local directory (never the network).

        ``path`` is either a diffusers Wan pipeline root (with ``tokenizer/`` and ``text_encoder/``
        subfolders) or a single folder holding both the tokenizer and encoder files.
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"text encoder directory not found: {root}")
        tokenizer_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        encoder_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        if not any((tokenizer_dir / name).is_file() for name in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"no tokenizer files ({' or '.join(_TOKENIZER_FILES)}) in {tokenizer_dir}"
            )
        if not (encoder_dir / "config.json").is_file():
            raise FileNotFoundError(f"no text encoder config.json in {encoder_dir}")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        # Explicit dtype: transformers 5 otherwise loads in the checkpoint's dtype (bf16 for Wan).
        encoder = UMT5EncoderModel.from_pretrained(encoder_dir, local_files_only=True, dtype=dtype)
        return cls(tokenizer, encoder, max_length)

    @property
    def out_dim(self) -> int:
        """Embedding width (the encoder's ``d_model``)."""
        return self.encoder.config.d_model

    @property
    def device(self) -> torch.device:
        """Device of the encoder's parameters."""
        return next(self.encoder.parameters()).device

    def train(self, mode: bool = True) -> TextEncoder:
        """Stay in eval mode whatever ``mode`` is: the encoder is frozen (no dropout)."""
        return super().train(False)

    def forward(self, captions: list[str]) -> torch.Tensor:
        """Embed ``captions`` (B strings, ``""`` allowed) as ``[B, max_length, out_dim]``.

        Captions longer than ``max_length`` tokens are truncated; positions past each caption's
        length are exactly zero. The result is in the encoder's dtype, on its device.
        """
        tokens = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        # no_grad rather than inference_mode: inference tensors cannot be saved for backward, and
        # the DiT's trainable layers do save their text inputs.
        with torch.no_grad():
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
