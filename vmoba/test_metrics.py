"""The video metrics of ``eval.run``, scored inside ``python main.py test``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from lightning.pytorch.utilities import rank_zero_warn


class TestMetrics:
    """Builds the requested ``eval.metrics`` once and scores sampled mp4 files as ``eval.run`` does
    (decoded from disk, prompt = caption, reference = same-named file in ``reference_dir``).

    Args:
        names: metric names (None: every metric).
        weights: ``{weights key: local file}``.
        reference_dir: folder of same-named reference videos, or None.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        names: Optional[list[str]],
        weights: Optional[dict[str, str]],
        reference_dir: Optional[str],
    ) -> None:
        from eval.metrics import METRICS, Options
        from eval.run import build_metrics, parse_weights

        self.reference_dir = None if reference_dir is None else Path(reference_dir)
        options = Options(weights=parse_weights([f"{k}={v}" for k, v in (weights or {}).items()]))
        self.ready, unavailable = build_metrics(
            names or list(METRICS), options, self.reference_dir is not None, True
        )
        for name, reason in unavailable.items():
            rank_zero_warn(f"test metric {name} skipped: {reason}")
        self.scores: dict[str, list[float]] = {name: [] for name in self.ready}

    def score(self, paths: list[Path], captions: list[str]) -> None:
        """Score each video at ``paths`` (prompted by the caption of the same position)."""
        from eval.metrics import Sample
        from eval.metrics.video import read_video

        for path, caption in zip(paths, captions):
            frames, fps = read_video(path)
            reference = None
            if self.reference_dir is not None:
                reference = read_video(self.reference_dir / path.name)[0]
            sample = Sample(frames=frames, fps=fps, reference=reference, prompt=caption)
            for name, metric in self.ready.items():
                self.scores[name].append(metric(sample))

    def means(self) -> dict[str, float]:
        """Mean score per metric over every video scored."""
        return {name: math.fsum(v) / len(v) for name, v in self.scores.items() if v}
