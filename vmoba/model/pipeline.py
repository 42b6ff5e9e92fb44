"""VMoBA in a plain diffusers ``WanPipeline``: training-free sparse attention for inference.

    import torch
    from diffusers import WanPipeline
    from vmoba.model import VMoBASettings
    from vmoba.model.pipeline import enable_vmoba

    pipe = WanPipeline.from_pretrained(WAN_DIR, torch_dtype=torch.bfloat16).to("cuda")
    steps = 50
    on_step_end = enable_vmoba(pipe, VMoBASettings(  # the paper's 81x480x832 training-free row
        block_1d=3, block_2d=[5, 13], block_3d=[7, 5, 13],
        select="topk", scope="query_head", topk=[2, 6, 18]), steps=steps)
    video = pipe("a cat surfing", num_frames=81, height=480, width=832,
                 num_inference_steps=steps, callback_on_step_end=on_step_end).frames[0]

Every self-attention of the pipeline's transformer becomes VMoBA (layer ``l`` of kind
``l % 3``); the first ``dense_fraction`` of the steps run dense, as the paper samples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from vmoba.model.processor import VMoBASettings
from vmoba.model.wan import VideoDiT


def enable_vmoba(
    pipeline: Any, settings: VMoBASettings, steps: int, dense_fraction: float = 0.25
) -> Callable[..., dict[str, Any]]:
    """Put VMoBA into ``pipeline.transformer`` (a ``WanTransformer3DModel``), in place.

    Args:
        pipeline: a diffusers ``WanPipeline`` (or any pipeline whose ``transformer`` is Wan's and
            that takes ``callback_on_step_end``).
        settings: blocks and selection rule (``mode="vmoba"``).
        steps: the ``num_inference_steps`` the pipeline will be called with.
        dense_fraction: share of the first steps with dense attention (paper: 0.25).

    Returns:
        The ``callback_on_step_end`` to pass to the pipeline call: it switches the layers from
        dense to VMoBA after the dense steps (and back to dense for the next call's first step).
    """
    if settings.mode != "vmoba":
        raise ValueError(f"settings.mode must be 'vmoba', got {settings.mode!r}")
    dit = VideoDiT(pipeline.transformer, settings)  # installs a processor in every attn1
    dense_steps = round(dense_fraction * steps)

    def set_grid(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        latents = args[0] if args else kwargs["hidden_states"]  # [B, C, T, H, W]
        dit.set_grid(latents.shape)

    def dense_for(step: int) -> None:
        for processor in dit.processors:
            processor.dense = step < dense_steps

    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        dense_for((step + 1) % steps)  # the next step; after the last, the next call's first
        return callback_kwargs

    pipeline.transformer.register_forward_pre_hook(set_grid, with_kwargs=True)
    dense_for(0)
    return on_step_end
