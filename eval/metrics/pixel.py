"""Pixel-level metrics: temporal flickering (no reference) and PSNR / SSIM / LPIPS against a reference."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from eval.metrics.base import Metric, Needs, Options, Sample, model_device, to_float_frames
from eval.metrics.weights import load_lpips, weight_path


def temporal_flickering_score(frames: np.ndarray) -> float:
    """VBench temporal flickering: ``(255 - mean |x_t - x_{t-1}|) / 255`` over uint8 ``[T, H, W, 3]``.

    1.0 for a static video; lower means more frame-to-frame change.
    """
    if len(frames) < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got {len(frames)}")
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0))  # [T-1, H, W, 3]
    mean_abs_diff = diffs.reshape(len(diffs), -1).mean(axis=1).mean()  # per pair, then over pairs
    return float((255.0 - mean_abs_diff) / 255.0)


def _pair(sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, reference) as float ``[T, 3, H, W]`` in [0, 1]; shapes must match."""
    if sample.reference is None:
        raise ValueError("this metric needs a reference video")
    if sample.reference.shape != sample.frames.shape:
        raise ValueError(
            f"video and reference shapes differ: {sample.frames.shape} vs {sample.reference.shape}"
        )
    return to_float_frames(sample.frames), to_float_frames(sample.reference)


class TemporalFlickering(Metric):
    """VBench ``temporal_flickering``'s score (higher = less flicker) on every video given. VBench
    first keeps only static videos (RAFT-based static filter) and scores those; this metric has no
    such filter, so a moving video scores lower here and VBench would have left it out."""

    name = "temporal_flickering"

    def __call__(self, sample: Sample) -> float:
        return temporal_flickering_score(sample.frames)


class PSNR(Metric):
    """Mean over frames of per-frame PSNR (dB, data range 1) against the reference; inf if equal."""

    name = "psnr"
    needs = Needs(reference=True)

    def __call__(self, sample: Sample) -> float:
        video, reference = _pair(sample)
        per_frame = peak_signal_noise_ratio(
            video, reference, data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        return float(per_frame.double().mean())


class SSIM(Metric):
    """Mean over frames of SSIM (Gaussian 11x11, sigma 1.5, data range 1) against the reference."""

    name = "ssim"
    needs = Needs(reference=True)

    def __call__(self, sample: Sample) -> float:
        video, reference = _pair(sample)
        return float(structural_similarity_index_measure(video, reference, data_range=1.0))


class LPIPS(Metric):
    """Mean over frames of LPIPS (lower = closer) against the reference, torchmetrics' network."""

    name = "lpips"
    needs = Needs(weights=("lpips",), reference=True)

    def __init__(self, net: torch.nn.Module) -> None:
        """``net``: torchmetrics ``_LPIPS`` module mapping two ``[N, 3, H, W]`` in [-1, 1] to ``[N]``."""
        self.net = net

    @classmethod
    def from_options(cls, options: Options) -> LPIPS:
        net = load_lpips(weight_path(options, "lpips", options.lpips_net), options.lpips_net)
        return cls(net.to(options.device))

    @torch.no_grad()
    def __call__(self, sample: Sample) -> float:
        device = model_device(self.net)
        video, reference = (x.to(device) for x in _pair(sample))
        return float(self.net(video * 2 - 1, reference * 2 - 1).mean())
