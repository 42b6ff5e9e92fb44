"""Text-to-video sampling with a flow-matching scheduler, classifier-free guidance, and dense
attention for the first denoising steps (the paper's inference schedule)."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vmoba.model.wan import VideoDiT


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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoise Gaussian noise into videos.

    Args:
        dit: the video DiT (its VMoBA layers run densely for the first ``dense_fraction`` steps).
        text: ``[B, L, text_dim]`` prompt embeddings; ``empty_text`` the same for "" (``[1 or B, L,
            text_dim]``), the unconditional branch of classifier-free guidance.
        shape: ``(C, T, H, W)`` of one sample.
        steps: denoising steps of the Euler flow-matching scheduler.
        guidance_scale: ``v = v_uncond + scale * (v_cond - v_uncond)``; 1 disables guidance.
        flow_shift: the scheduler's timestep shift (Wan: 3.0 at 480p, 5.0 at 720p).
        dense_fraction: share of the first steps that use dense attention (paper: 0.25).
        generator: source of the initial noise.

    Returns:
        ``[B, C, T, H, W]`` samples clamped to [-1, 1].
    """
    batch = text.shape[0]
    scheduler = FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    scheduler.set_timesteps(steps, device=text.device)
    x = torch.randn((batch, *shape), generator=generator, device=text.device, dtype=text.dtype)
    both_text = torch.cat([text, empty_text.expand_as(text)])
    dense_steps = round(dense_fraction * steps)
    for i, t in enumerate(scheduler.timesteps):
        with dit.dense_attention(i < dense_steps):
            cond, uncond = dit(torch.cat([x, x]), t.expand(2 * batch), both_text).chunk(2)
        x = scheduler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
    return x.clamp(-1, 1)
