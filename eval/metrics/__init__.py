"""Video generation metrics (VBench definitions where VMoBA reports them; PSNR/SSIM/LPIPS)."""

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
