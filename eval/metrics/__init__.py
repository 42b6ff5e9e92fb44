"""Video generation metrics, each scoring one video.

VBench dimensions, same procedure and models as VBench's code: ``subject_consistency``,
``background_consistency``, ``dynamic_degree`` (one edge case differs: 2 sampled frames) and
``imaging_quality``; ``temporal_flickering`` is VBench's score without its static-video filter.
Not VBench: ``psnr``, ``ssim``, ``lpips`` (against a reference video, e.g. full attention's) and
``clip_score`` (per-frame CLIPScore; VBench's text dimension ``overall_consistency`` uses ViCLIP
and is not computed here). Each class's docstring states its correspondence.
"""

from eval.metrics.base import Metric, MetricUnavailable, Needs, Options, Sample
from eval.metrics.registry import METRICS, get_metric, missing_inputs

__all__ = [
    "METRICS",
    "Metric",
    "MetricUnavailable",
    "Needs",
    "Options",
    "Sample",
    "get_metric",
    "missing_inputs",
]
