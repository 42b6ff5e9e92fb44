"""The video DiT: diffusers' Wan 2.1 transformer with VMoBA in every self-attention."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from diffusers import WanTransformer3DModel
from torch.distributed import ProcessGroup

from vmoba.attention import LAYER_KINDS
from vmoba.model.processor import VMoBAAttnProcessor, VMoBASettings
from vmoba.parallel.ulysses import check_exact_scope, gather_sequence, shard_sequence

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


def patch_grid(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(T, Hg, Wg)`` of latents of ``shape`` ``(..., T, H, W)`` cut into ``patch``
    ``(pt, ph, pw)`` patches."""
    (t, h, w), (pt, ph, pw) = shape[-3:], patch
    return t // pt, h // ph, w // pw


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
    """Wan transformer whose ``attn1`` layers run VMoBA (or stay dense with ``mode="full"``).

    Args:
        transformer: a ``WanTransformer3DModel``.
        settings: VMoBA settings; layer ``l`` gets kind ``l % 3``.
    """

    def __init__(self, transformer: WanTransformer3DModel, settings: VMoBASettings) -> None:
        super().__init__()
        self.transformer = transformer
        self.processors: list[VMoBAAttnProcessor] = []
        self.sequence_group: Optional[ProcessGroup] = None
        if settings.mode == "vmoba":
            for index, block in enumerate(transformer.blocks):
                processor = VMoBAAttnProcessor(index, settings)
                block.attn1.set_processor(processor)
                self.processors.append(processor)

    def enable_sequence_parallel(self, group: ProcessGroup) -> None:
        """Split every video's tokens over the ranks of ``group`` (Ulysses sequence parallelism).

        Every rank of ``group`` must then call :meth:`forward` with the same inputs. The RoPE
        tables and the first block's input are split by token, each VMoBA layer attends through
        :func:`vmoba.parallel.ulysses.ulysses_attention`, and ``proj_out``'s output is gathered:
        patchify and unpatchify see whole videos, and every rank gets the whole velocity. This
        is diffusers' ``WanTransformer3DModel._cp_plan``; its ``enable_parallelism`` is not used
        because it needs a CUDA device mesh and routes attention through diffusers' backends.
        Enabling it again with the same group does nothing.
        """
        if self.sequence_group is group:
            return  # a second trainer call (fit, then validate) on the same model
        if self.sequence_group is not None:
            raise RuntimeError("sequence parallelism is already enabled with another group")
        if not self.processors:
            raise ValueError("sequence parallelism needs attention='vmoba', got attention='full'")
        heads = self.transformer.config.num_attention_heads
        if heads % dist.get_world_size(group):
            raise ValueError(
                f"num_attention_heads ({heads}) must be divisible by the sequence-parallel size "
                f"({dist.get_world_size(group)})"
            )
        for processor in self.processors:
            check_exact_scope(processor.config.scope)
            processor.sequence_group = group

        def shard_rope(module, args, tables):  # (cos, sin), each [1, S, 1, D]
            return tuple(shard_sequence(table, group) for table in tables)

        def shard_tokens(module, args):  # hidden_states [B, S, C] is the first argument
            return (shard_sequence(args[0], group), *args[1:])

        def gather_tokens(module, args, out):  # [B, S/N, C_out * prod(patch)]
            return gather_sequence(out, group)

        self.transformer.rope.register_forward_hook(shard_rope)
        self.transformer.blocks[0].register_forward_pre_hook(shard_tokens)
        self.transformer.proj_out.register_forward_hook(gather_tokens)
        self.sequence_group = group

    @property
    def sequence_size(self) -> int:
        """Ranks sharing each video (1 without sequence parallelism)."""
        return 1 if self.sequence_group is None else dist.get_world_size(self.sequence_group)

    @property
    def sequence_rank(self) -> int:
        """This rank's index in its sequence-parallel group (0 without one)."""
        return 0 if self.sequence_group is None else dist.get_rank(self.sequence_group)

    def latent_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T, Hg, Wg)`` of latents of ``shape`` ``(..., T, H, W)`` after patchifying."""
        return patch_grid(shape, self.transformer.config.patch_size)

    def set_grid(self, shape: Sequence[int]) -> None:
        """Tell every VMoBA layer the token grid of the latents ``shape`` about to be denoised."""
        grid = self.latent_grid(shape)
        for processor in self.processors:
            processor.grid = grid

    def forward(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        """Velocity ``[B, C, T, H, W]`` for latents ``[B, C, T, H, W]``, timesteps ``[B]`` in
        [0, 1000] and text embeddings ``[B, L, text_dim]``."""
        self.set_grid(latents.shape)
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
