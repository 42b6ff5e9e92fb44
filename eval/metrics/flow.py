"""VBench dynamic degree: is a video moving, judged from optical flow magnitudes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from eval.metrics.base import Metric, Needs, Options, Sample, to_float_frames
from eval.metrics.weights import load_raft, weight_path

# A flow model maps two frames ``[1, 3, H, W]`` in [-1, 1] to flow ``[1, 2, H, W]`` in pixels.
FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def top_flow_magnitude(flow: torch.Tensor, fraction: float = 0.05) -> float:
    """Mean of the largest ``fraction`` of per-pixel flow magnitudes of ``flow`` ``[2, H, W]``."""
    magnitude = flow.double().norm(dim=0).flatten()  # [H*W]
    count = int(magnitude.numel() * fraction)
    if count < 1:
        raise ValueError(f"flow of {magnitude.numel()} pixels has no top {fraction:.0%}")
    return float(magnitude.topk(count).values.mean())


def is_dynamic(pair_scores: list[float], height: int, width: int, threshold: float = 6.0) -> bool:
    """VBench's rule: enough frame pairs move more than a resolution-scaled threshold.

    A pair moves if its top-5% flow magnitude exceeds ``threshold * min(H, W) / 256``; the video is
    dynamic once ``round(4 * T / 16)`` pairs move (T = frames = pairs + 1), at least one pair.
    """
    scaled = threshold * min(height, width) / 256.0
    needed = max(1, round(4 * (len(pair_scores) + 1) / 16))
    return sum(score > scaled for score in pair_scores) >= needed


def pad_to_multiple(frames: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Replicate-pad ``[N, C, H, W]`` centred to H, W multiples of ``multiple`` (RAFT's InputPadder)."""
    height, width = frames.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return F.pad(frames, padding, mode="replicate")


def sample_frames(num_frames: int, fps: float, target_fps: float = 8.0) -> range:
    """Frame indices VBench keeps: every ``round(fps / target_fps)``-th frame (at least every one)."""
    return range(0, num_frames, max(1, round(fps / target_fps)))


class RaftFlow:
    """torchvision RAFT as a :data:`FlowFn` (final refinement, ``num_flow_updates`` iterations)."""

    def __init__(self, model: torch.nn.Module, num_flow_updates: int = 20) -> None:
        self.model = model
        self.num_flow_updates = num_flow_updates

    @torch.no_grad()
    def __call__(self, frame1: torch.Tensor, frame2: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        flows = self.model(
            frame1.to(device), frame2.to(device), num_flow_updates=self.num_flow_updates
        )
        return flows[-1].cpu()


class DynamicDegree(Metric):
    """1.0 if the video is dynamic by :func:`is_dynamic`, else 0.0; the mean over videos is VBench's
    ``dynamic_degree`` (RAFT on frames sampled at 8 fps, inputs in [-1, 1], the last of 20 flow
    refinements). One difference: with 2 sampled frames VBench's pair count rounds to 0 and calls
    every video dynamic; here its one pair must move."""

    name = "dynamic_degree"
    needs = Needs(weights=("raft",))

    def __init__(self, flow: FlowFn, threshold: float = 6.0) -> None:
        """``flow``: two ``[1, 3, H, W]`` frames in [-1, 1] -> flow ``[1, 2, H, W]`` in pixels."""
        self.flow = flow
        self.threshold = threshold

    @classmethod
    def from_options(cls, options: Options) -> DynamicDegree:
        model = load_raft(weight_path(options, "raft", options.raft_arch), options.raft_arch)
        return cls(RaftFlow(model.to(options.device)))

    def __call__(self, sample: Sample) -> float:
        kept = sample.frames[list(sample_frames(len(sample.frames), sample.fps))]
        if len(kept) < 2:
            raise ValueError(f"dynamic degree needs at least 2 frames, got {len(kept)}")
        frames = pad_to_multiple(to_float_frames(kept) * 2 - 1)  # [T, 3, H', W'] in [-1, 1]
        # As in VBench: magnitudes over the padded frame, threshold scaled by the unpadded size.
        scores = [
            top_flow_magnitude(self.flow(frames[t : t + 1], frames[t + 1 : t + 2])[0])
            for t in range(len(frames) - 1)
        ]
        height, width = kept.shape[1:3]
        return float(is_dynamic(scores, height, width, self.threshold))
