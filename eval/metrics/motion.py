"""VBench motion smoothness: how well a frame interpolator predicts the dropped odd frames.

VBench uses the AMT-S interpolation network, whose code is not packaged on PyPI, so the CLI
reports this metric as unavailable; :func:`motion_smoothness_score` holds the rule for any
interpolator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eval.metrics.base import Metric, MetricUnavailable, Options, Sample

# Predicts the middle frame of two uint8 ``[H, W, 3]`` frames, as uint8 ``[H, W, 3]``.
Interpolator = Callable[[np.ndarray, np.ndarray], np.ndarray]

AMT_MISSING = (
    "needs the AMT-S frame interpolation network (VBench's vbench/third_party/amt code, not on "
    "PyPI, not vendored here) and its checkpoint amt-s.pth; not implemented"
)


def motion_smoothness_score(frames: np.ndarray, interpolate: Interpolator) -> float:
    """``(255 - mean |x_odd - interpolate(x_even_before, x_even_after)|) / 255``.

    Args:
        frames: uint8 ``[T, H, W, 3]`` with T >= 3.
        interpolate: middle-frame predictor.
    """
    if len(frames) < 3:
        raise ValueError(f"motion smoothness needs at least 3 frames, got {len(frames)}")
    errors = [
        np.abs(frames[t].astype(np.int16) - interpolate(frames[t - 1], frames[t + 1])).mean()
        for t in range(1, len(frames) - 1, 2)
    ]
    return float((255.0 - np.mean(errors)) / 255.0)


class MotionSmoothness(Metric):
    """:func:`motion_smoothness_score` with a given interpolator (AMT-S in VBench)."""

    name = "motion_smoothness"

    def __init__(self, interpolate: Interpolator) -> None:
        self.interpolate = interpolate

    @classmethod
    def from_options(cls, options: Options) -> MotionSmoothness:
        raise MetricUnavailable(AMT_MISSING)

    def __call__(self, sample: Sample) -> float:
        return motion_smoothness_score(sample.frames, self.interpolate)
