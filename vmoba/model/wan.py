"""The video DiT: diffusers' Wan 2.1 transformer with VMoBA in every self-attention."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from diffusers import WanTransformer3DModel

from vmoba.attention import LAYER_KINDS
from vmoba.model.processor import VMoBAAttnProcessor, VMoBASettings

TINY_WAN = dict(
    patch_size=[1, 2, 2],
    num_attention_heads=4,
    attention_head_dim=16,
    in_channels=3,
    out_channels=3,
    text_dim=64,
    freq_dim=64,
    ffn_dim=128,
    num_layers=3,
    rope_max_seq_len=256,
)


def load_transformer(
    config: Optional[dict[str, Any]] = None, pretrained_path: Optional[str] = None
) -> WanTransformer3DModel:
    """A Wan transformer from a local diffusers directory, or randomly initialised from ``config``.

    ``pretrained_path`` may be the transformer folder or a pipeline folder with ``transformer/``.
    """
    if pretrained_path is None:
        return WanTransformer3DModel(**(TINY_WAN if config is None else config))
    path = Path(pretrained_path).expanduser()
    if (path / "transformer").is_dir():
        path = path / "transformer"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Wan transformer (config.json) under {pretrained_path}")
    return WanTransformer3DModel.from_pretrained(path, local_files_only=True)


class VideoDiT(torch.nn.Module):
    """Wan transformer whose ``attn1`` layers run VMoBA (or stay dense with ``attention="full"``).

    Args:
        transformer: a ``WanTransformer3DModel``.
        settings: VMoBA settings; layer ``l`` gets kind ``l % 3``.
    """

    def __init__(self, transformer: WanTransformer3DModel, settings: VMoBASettings) -> None:
        super().__init__()
        self.transformer = transformer
        self.processors: list[VMoBAAttnProcessor] = []
        if settings.attention == "vmoba":
            for index, block in enumerate(transformer.blocks):
                processor = VMoBAAttnProcessor(index, settings)
                block.attn1.set_processor(processor)
                self.processors.append(processor)

    def latent_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T, Hg, Wg)`` of latents of ``shape`` ``(..., T, H, W)`` after patchifying."""
        pt, ph, pw = self.transformer.config.patch_size
        t, h, w = shape[-3:]
        return t // pt, h // ph, w // pw

    def forward(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        """Velocity ``[B, C, T, H, W]`` for latents ``[B, C, T, H, W]``, timesteps ``[B]`` in
        [0, 1000] and text embeddings ``[B, L, text_dim]``."""
        grid = self.latent_grid(latents.shape)
        for processor in self.processors:
            processor.grid = grid
        return self.transformer(latents, timestep, text, return_dict=False)[0]

    @contextlib.contextmanager
    def dense_attention(self, enabled: bool = True) -> Iterator[None]:
        """Run every VMoBA layer densely inside the block (sampling's first steps)."""
        previous = [p.dense for p in self.processors]
        for processor in self.processors:
            processor.dense = enabled
        try:
            yield
        finally:
            for processor, dense in zip(self.processors, previous):
                processor.dense = dense

    def densities(self) -> dict[str, torch.Tensor]:
        """Mean kept density per layer kind over the last VMoBA forward (0-dim tensors)."""
        result = {}
        for kind in LAYER_KINDS:
            values = [
                p.density for p in self.processors if p.kind == kind and p.density is not None
            ]
            if values:
                result[kind] = torch.stack(values).mean()
        return result
