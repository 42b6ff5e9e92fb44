"""What every metric shares: the per-video sample, what a metric needs, and the metric interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; the message says which file or package is missing and where."""


@dataclass(frozen=True)
class Sample:
    """One video to score.

    Attributes:
        frames: uint8 RGB frames ``[T, H, W, 3]``.
        fps: frame rate of the decoded video.
        reference: same-shaped uint8 frames of the reference (full-attention) video, if any.
        prompt: the text prompt the video was generated from, if any.
    """

    frames: np.ndarray
    fps: float = 8.0
    reference: np.ndarray | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class Needs:
    """Inputs a metric needs beyond the video: ``--weights`` keys, reference videos, prompts."""

    weights: tuple[str, ...] = ()
    reference: bool = False
    prompts: bool = False


@dataclass(frozen=True)
class Options:
    """Model choices shared by the metrics that load weights (CLI flags of the same names)."""

    clip_model: str = "ViT-B-32-quickgelu"
    lpips_net: str = "alex"
    raft_arch: str = "large"
    device: str = "cpu"
    weights: Mapping[str, Path] = field(default_factory=dict)
    check_weights: bool = True  # check files against the checksums their canonical names carry


class Metric(ABC):
    """A per-video score. Subclasses set ``name`` and ``needs`` and build from local weights."""

    name: str
    needs: Needs = Needs()

    @classmethod
    def from_options(cls, options: Options) -> Metric:
        """Build the metric, loading any weights from ``options.weights`` (local paths only).

        Raises:
            MetricUnavailable: a needed package or file is missing.
        """
        return cls()

    @abstractmethod
    def __call__(self, sample: Sample) -> float:
        """Score one video."""


def model_device(model: object) -> torch.device:
    """Where a model's parameters live (the CPU for a plain function or a parameterless module):
    the device its inputs must be moved to."""
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    return next(parameters, torch.empty(0)).device


def to_float_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` in [0, 1]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
