"""VBench imaging quality: MUSIQ (pyiqa, SPAQ checkpoint) averaged over frames, divided by 100."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from eval.metrics.base import (
    Metric,
    MetricUnavailable,
    Needs,
    Options,
    Sample,
    model_device,
    to_float_frames,
)
from eval.metrics.weights import load_musiq, weight_path

# A no-reference quality model: one frame ``[1, 3, H, W]`` in [0, 1] -> score in [0, 100].
QualityFn = Callable[[torch.Tensor], torch.Tensor]


def limit_longer_side(frames: torch.Tensor, longest: int = 512) -> torch.Tensor:
    """VBench's 'longer' preprocessing: shrink ``[T, 3, H, W]`` so max(H, W) <= ``longest``."""
    height, width = frames.shape[-2:]
    if max(height, width) <= longest:
        return frames
    scale = longest / max(height, width)
    return v2.functional.resize(frames, [int(scale * height), int(scale * width)], antialias=False)


class ImagingQuality(Metric):
    """VBench ``imaging_quality``, the same procedure: MUSIQ (pyiqa, SPAQ checkpoint) on every
    frame, the longer side limited to 512 (:func:`limit_longer_side`), mean score / 100."""

    name = "imaging_quality"
    needs = Needs(weights=("musiq",))

    def __init__(self, model: QualityFn) -> None:
        """``model``: ``[1, 3, H, W]`` in [0, 1] -> quality score in [0, 100] (MUSIQ)."""
        self.model = model

    @classmethod
    def from_options(cls, options: Options) -> ImagingQuality:
        path = weight_path(options, "musiq")
        try:
            model = load_musiq(path)
        except ImportError as error:
            raise MetricUnavailable(f'needs pyiqa: pip install -e ".[iqa]" ({error})') from error
        return cls(model.to(options.device))

    @torch.no_grad()
    def __call__(self, sample: Sample) -> float:
        frames = limit_longer_side(to_float_frames(sample.frames)).to(model_device(self.model))
        scores = [float(self.model(frame[None])) for frame in frames]
        return sum(scores) / len(scores) / 100.0
