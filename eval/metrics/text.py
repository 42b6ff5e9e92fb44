"""CLIP score of a video against its prompt: per-frame image-text similarity with open_clip.

Not VBench's text-video dimension: VBench's ``overall_consistency`` (the paper's TextConsis column)
embeds the whole clip with ViCLIP, whose code is not packaged; this repo does not compute it.
"""

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


class ClipScore(Metric):
    """CLIPScore (Hessel et al. 2021, torchmetrics' ``clip_score`` definition) per frame, averaged
    over frames: ``mean_t max(100 * cos(image_emb_t, text_emb), 0)``. Frames are resized and
    normalised as :func:`~eval.metrics.consistency.clip_transform`."""

    name = "clip_score"
    needs = Needs(weights=("clip",), prompts=True)

    def __init__(self, model: torch.nn.Module, tokenizer: Callable) -> None:
        """``model``: an open_clip model; ``tokenizer``: ``list[str] -> [N, L]`` token ids."""
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_options(cls, options: Options) -> ClipScore:
        model, tokenizer = load_clip(weight_path(options, "clip"), options.clip_model)
        return cls(model.to(options.device), tokenizer)

    @torch.no_grad()
    def __call__(self, sample: Sample) -> float:
        if sample.prompt is None:
            raise ValueError(f"{self.name} needs a prompt")
        frames = to_float_frames(sample.frames)
        similarity = frame_text_similarity(self.model, self.tokenizer, frames, sample.prompt)
        return float(similarity.clamp(min=0).mean())
