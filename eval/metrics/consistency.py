"""VBench subject consistency (DINO features) and background consistency (CLIP image features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from eval.metrics.base import Metric, Needs, Options, Sample, to_float_frames
from eval.metrics.weights import load_clip, load_dino, weight_path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def consistency_score(features: torch.Tensor) -> float:
    """Mean over frames t > 0 of ``(max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2``.

    Args:
        features: per-frame features ``[T, D]`` with T >= 2.
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be [T>=2, D], got {tuple(features.shape)}")
    feats = F.normalize(features.double(), dim=-1)
    to_previous = (feats[1:] * feats[:-1]).sum(-1).clamp(min=0)  # [T-1]
    to_first = (feats[1:] * feats[:1]).sum(-1).clamp(min=0)  # [T-1]
    return float(((to_previous + to_first) / 2).mean())


def dino_transform(frames: torch.Tensor, size: int = 224, patch: int = 16) -> torch.Tensor:
    """VBench's DINO input: short side resized to ``size`` (no crop), ImageNet-normalised.

    The bottom/right remainder below a multiple of ``patch`` is dropped, which DINO's stride-16
    patch embedding does implicitly. ``[T, 3, H, W]`` in [0, 1] -> ``[T, 3, H', W']``.
    """
    frames = v2.functional.resize(frames, size, antialias=False)
    height, width = frames.shape[-2:]
    frames = frames[..., : height - height % patch, : width - width % patch]
    return v2.functional.normalize(frames, IMAGENET_MEAN, IMAGENET_STD)


def clip_transform(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP input: bicubic short-side resize to ``size``, centre crop, CLIP-normalised.

    ``[T, 3, H, W]`` in [0, 1] -> ``[T, 3, size, size]``.
    """
    frames = v2.functional.resize(
        frames, size, interpolation=v2.InterpolationMode.BICUBIC, antialias=False
    )
    frames = v2.functional.center_crop(frames, size)
    return v2.functional.normalize(frames, CLIP_MEAN, CLIP_STD)


def clip_image_size(model: torch.nn.Module) -> int:
    """Square input side of an open_clip model's image tower."""
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


class SubjectConsistency(Metric):
    """VBench ``subject_consistency``, the same procedure: every frame through DINO ViT-B/16
    (:func:`dino_transform`), :func:`consistency_score` of the CLS features."""

    name = "subject_consistency"
    needs = Needs(weights=("dino",))

    def __init__(self, model: torch.nn.Module) -> None:
        """``model``: ``[N, 3, H, W]`` ImageNet-normalised -> ``[N, D]`` (e.g. a timm ViT, no head)."""
        self.model = model

    @classmethod
    def from_options(cls, options: Options) -> SubjectConsistency:
        return cls(load_dino(weight_path(options, "dino")).to(options.device))

    @torch.no_grad()
    def __call__(self, sample: Sample) -> float:
        device = next(self.model.parameters()).device
        frames = dino_transform(to_float_frames(sample.frames)).to(device)
        return consistency_score(self.model(frames))


class BackgroundConsistency(Metric):
    """VBench ``background_consistency``, the same procedure: every frame through CLIP ViT-B/32
    (:func:`clip_transform`), :func:`consistency_score` of the image embeddings."""

    name = "background_consistency"
    needs = Needs(weights=("clip",))

    def __init__(self, model: torch.nn.Module) -> None:
        """``model``: an open_clip model (``encode_image``: ``[N, 3, S, S]`` -> ``[N, D]``)."""
        self.model = model

    @classmethod
    def from_options(cls, options: Options) -> BackgroundConsistency:
        model, _ = load_clip(weight_path(options, "clip"), options.clip_model)
        return cls(model.to(options.device))

    @torch.no_grad()
    def __call__(self, sample: Sample) -> float:
        device = next(self.model.parameters()).device
        frames = clip_transform(to_float_frames(sample.frames), clip_image_size(self.model))
        return consistency_score(self.model.encode_image(frames.to(device)))
