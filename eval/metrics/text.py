"""Video-text similarity with an open_clip model: text consistency and CLIP score."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from eval.metrics.base import Metric, Needs, Options, Sample, to_float_frames
from eval.metrics.consistency import clip_image_size, clip_transform
from eval.metrics.weights import load_clip, weight_path


def frame_text_similarity(
    model: torch.nn.Module, tokenizer: Callable, frames: torch.Tensor, prompt: str
) -> torch.Tensor:
    """``100 * cos(image_emb_t, text_emb)`` per frame.

    Args:
        model: open_clip model (``encode_image``, ``encode_text``).
        tokenizer: its tokenizer, ``list[str] -> [N, L]`` token ids.
        frames: ``[T, 3, H, W]`` in [0, 1].
        prompt: the video's text prompt.

    Returns:
        ``[T]`` float64 similarities in [-100, 100].
    """
    device = next(model.parameters()).device
    images = clip_transform(frames, clip_image_size(model)).to(device)
    image_emb = F.normalize(model.encode_image(images).double(), dim=-1)  # [T, D]
    text_emb = F.normalize(model.encode_text(tokenizer([prompt]).to(device)).double(), dim=-1)
    return 100 * (image_emb @ text_emb.T).squeeze(-1)


class _ClipText(Metric):
    needs = Needs(weights=("clip",), prompts=True)

    def __init__(self, model: torch.nn.Module, tokenizer: Callable) -> None:
        """``model``: an open_clip model; ``tokenizer``: ``list[str] -> [N, L]`` token ids."""
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_options(cls, options: Options) -> _ClipText:
        model, tokenizer = load_clip(weight_path(options.weights, "clip"), options.clip_model)
        return cls(model.to(options.device), tokenizer)

    def _similarities(self, sample: Sample) -> torch.Tensor:
        if sample.prompt is None:
            raise ValueError(f"{self.name} needs a prompt")
        with torch.no_grad():
            return frame_text_similarity(
                self.model, self.tokenizer, to_float_frames(sample.frames), sample.prompt
            )


class TextConsistency(_ClipText):
    """Mean over frames of ``100 * cos(image_emb, text_emb)``."""

    name = "text_consistency"

    def __call__(self, sample: Sample) -> float:
        return float(self._similarities(sample).mean())


class ClipScore(_ClipText):
    """torchmetrics-style CLIP score: mean over frames of ``max(100 * cos, 0)``."""

    name = "clip_score"

    def __call__(self, sample: Sample) -> float:
        return float(self._similarities(sample).clamp(min=0).mean())
