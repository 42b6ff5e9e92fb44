"""All metrics by name, and the check of whether a metric's inputs are present."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from eval.metrics.base import Metric
from eval.metrics.consistency import BackgroundConsistency, SubjectConsistency
from eval.metrics.flow import DynamicDegree
from eval.metrics.pixel import LPIPS, PSNR, SSIM, TemporalFlickering
from eval.metrics.quality import ImagingQuality
from eval.metrics.text import ClipScore
from eval.metrics.weights import WEIGHT_FILES

METRICS: dict[str, type[Metric]] = {
    cls.name: cls
    for cls in (
        PSNR,
        SSIM,
        LPIPS,
        SubjectConsistency,
        BackgroundConsistency,
        DynamicDegree,
        ImagingQuality,
        ClipScore,
        TemporalFlickering,
    )
}


def get_metric(name: str) -> type[Metric]:
    """The metric class called ``name``; unknown names fail listing the valid ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")
    return METRICS[name]


def missing_inputs(
    metric: type[Metric], weights: Mapping[str, Path], has_reference: bool, has_prompts: bool
) -> str | None:
    """Why ``metric`` cannot run with these inputs (what to pass, which file), or None if it can."""
    reasons = [
        f"needs --weights {key}=PATH: {WEIGHT_FILES[key]}"
        for key in metric.needs.weights
        if key not in weights
    ]
    if metric.needs.reference and not has_reference:
        reasons.append("needs --reference DIR with same-named reference videos")
    if metric.needs.prompts and not has_prompts:
        reasons.append("needs --prompts FILE")
    return "; ".join(reasons) or None
