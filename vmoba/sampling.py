"""Text-to-video sampling with a flow-matching scheduler, classifier-free guidance, and dense
attention for the first denoising steps (the paper's inference schedule); mp4 names from
captions and uint8 frames for the folders of sampled videos (``data.video_io`` writes them)."""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from vmoba.model.wan import VideoDiT

Scheduler = Literal["euler", "unipc"]
SCHEDULERS: tuple[str, ...] = ("euler", "unipc")


def make_scheduler(
    name: Scheduler, flow_shift: float
) -> FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler:
    """A diffusers flow-matching scheduler with timestep shift ``flow_shift``.

    ``"euler"``: first-order ``FlowMatchEulerDiscreteScheduler``. ``"unipc"``: Wan 2.1's default,
    ``UniPCMultistepScheduler`` (order 2, bh2 corrector) on flow sigmas with the model's output
    read as the flow velocity, configured as in Wan's diffusers pipeline.
    """
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    if name == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
        )
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


def caption_slug(caption: str) -> str:
    """File-name-safe form of a caption: runs of other characters become ``_``, at most 60."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", caption).strip("_")[:60]


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[C, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, C]``."""
    return (
        ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).cpu().numpy()
    )


@torch.no_grad()
def sample_videos(
    dit: VideoDiT,
    text: torch.Tensor,
    empty_text: torch.Tensor,
    shape: tuple[int, int, int, int],
    *,
    steps: int = 20,
    guidance_scale: float = 5.0,
    flow_shift: float = 3.0,
    dense_fraction: float = 0.25,
    scheduler: Scheduler = "euler",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoise Gaussian noise into videos.

    Args:
        dit: the video DiT (its VMoBA layers run densely for the first ``dense_fraction`` steps).
        text: ``[B, L, text_dim]`` prompt embeddings; ``empty_text`` the same for "" (``[1 or B, L,
            text_dim]``), the unconditional branch of classifier-free guidance.
        shape: ``(C, T, H, W)`` of one sample.
        steps: denoising steps.
        guidance_scale: ``v = v_uncond + scale * (v_cond - v_uncond)``; 1 disables guidance.
        flow_shift: the scheduler's timestep shift (Wan: 3.0 at 480p, 5.0 at 720p).
        dense_fraction: share of the first steps that use dense attention (paper: 0.25).
        scheduler: ``"euler"`` or ``"unipc"`` (see :func:`make_scheduler`).
        generator: source of the initial noise.

    Returns:
        ``[B, C, T, H, W]`` samples clamped to [-1, 1].
    """
    batch = text.shape[0]
    solver = make_scheduler(scheduler, flow_shift)
    solver.set_timesteps(steps, device=text.device)
    # The DiT sees each step's exact time 1000 * sigma, as in training (UniPC's own timesteps are
    # that rounded down to an integer; Euler's are exactly it).
    times = (solver.sigmas[:steps] * 1000).to(text.device)
    x = torch.randn((batch, *shape), generator=generator, device=text.device, dtype=text.dtype)
    both_text = torch.cat([text, empty_text.expand_as(text)])
    dense_steps = round(dense_fraction * steps)
    for i, t in enumerate(solver.timesteps):
        with dit.dense_attention(i < dense_steps):
            cond, uncond = dit(torch.cat([x, x]), times[i].expand(2 * batch), both_text).chunk(2)
        x = solver.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
    return x.clamp(-1, 1)
