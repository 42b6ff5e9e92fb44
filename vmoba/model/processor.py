"""Wan 2.1 self-attention with VMoBA: a diffusers attention processor for ``attn1``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch.distributed import ProcessGroup

from vmoba.attention import LAYER_KINDS, Selection, VMoBAConfig, vmoba_attention
from vmoba.attention.partition import BlockSpec, Grid, LayerKind
from vmoba.attention.selection import Scope, Select
from vmoba.parallel.ulysses import ulysses_attention


@dataclass
class VMoBASettings:
    """VMoBA settings of a whole DiT; layer ``l`` uses kind ``("1d", "2d", "3d")[l % 3]``.

    Args:
        mode: ``"vmoba"`` puts VMoBA in every self-attention; ``"full"`` keeps diffusers' dense
            processor (the full-attention baseline of the same config).
        block_1d: latent frames per 1D temporal block.
        block_2d: ``[ch, cw]`` latent rows x columns of a 2D spatial block.
        block_3d: ``[ct, ch, cw]`` of a 3D cuboid block.
        select: ``"threshold"`` (paper's trained setting) or ``"topk"``.
        scope: ``"head_global"``, ``"query_head"``, ``"block"`` (threshold only) or ``"overall"``.
        threshold: ``tau`` in [0, 1] for ``select="threshold"``.
        topk: ``[k_1d, k_2d, k_3d]`` blocks per query (self block counted) for ``select="topk"``.
        backend: attention backend name (``"auto"`` picks the best for the device).
    """

    mode: Literal["full", "vmoba"] = "vmoba"
    block_1d: int = 2
    block_2d: list[int] = field(default_factory=lambda: [4, 4])
    block_3d: list[int] = field(default_factory=lambda: [2, 8, 8])
    select: Select = "threshold"
    scope: Scope = "head_global"
    threshold: float = 0.25
    topk: Optional[list[int]] = None
    backend: str = "auto"

    def block(self, kind: LayerKind) -> BlockSpec:
        return {"1d": self.block_1d, "2d": tuple(self.block_2d), "3d": tuple(self.block_3d)}[kind]

    def layer_config(self, kind: LayerKind) -> VMoBAConfig:
        """The validated block, selection rule and backend of the layers of ``kind``."""
        topk = None if self.topk is None else self.topk[LAYER_KINDS.index(kind)]
        return VMoBAConfig(
            self.select, self.scope, self.threshold, topk, block=self.block(kind),
            backend=self.backend,
        )


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on interleaved pairs: ``x`` ``[B, S, H, D]``, ``cos``/``sin`` ``[1, S, 1, D]``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class VMoBAAttnProcessor:
    """Self-attention of one Wan block through VMoBA.

    Built with its layer index (which fixes the layer kind, block and selection) and told the
    latent grid of the current batch by :class:`vmoba.model.wan.VideoDiT` before each forward.
    ``dense = True`` runs exactly diffusers' dense attention instead (the first denoising steps).
    After a VMoBA forward, ``density`` holds the kept density (0-dim tensor, no host sync).
    With a ``sequence_group`` (Ulysses, set by :meth:`VideoDiT.enable_sequence_parallel`) it gets
    this rank's tokens and attends over the whole sequence for its share of the heads; ``density``
    and ``selection_record`` then cover those heads only.
    """

    def __init__(self, layer_index: int, settings: VMoBASettings) -> None:
        self.kind: LayerKind = LAYER_KINDS[layer_index % 3]
        self.config = settings.layer_config(self.kind)
        self.grid: Optional[Grid] = None
        self.dense = False
        self.density: Optional[torch.Tensor] = None
        self.record_selection = False  # keep the last selection for pictures
        self.selection_record: Optional[Selection] = None
        self.sequence_group: Optional[ProcessGroup] = None

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("VMoBAAttnProcessor is for self-attention (attn1) without a mask")
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # [B, S, H, D]
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = apply_rotary(q, *rotary_emb), apply_rotary(k, *rotary_emb)
        if self.sequence_group is None:
            out = self._attend(q, k, v)
        else:
            out = ulysses_attention(q, k, v, self._attend, self.sequence_group)
        out = out.flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        return self._vmoba(q, k, v)

    def _vmoba(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.grid is None:
            raise RuntimeError("VMoBAAttnProcessor.grid is unset: call it through VideoDiT")
        out, selection = vmoba_attention(
            q, k, v, grid=self.grid, config=self.config, return_selection=True
        )
        self.density = selection.density
        if self.record_selection:
            self.selection_record = selection
        return out
