"""Lightning callbacks of the eval layer, added to ``python main.py`` by ``main.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from eval.metrics import METRICS, Metric, Options
from eval.metrics.video import read_sample
from eval.run import build_metrics, parse_weights


class TestVideoMetrics(Callback):
    """Scores the videos ``test`` samples with the metrics of ``eval.run``, as it does (decoded
    from disk, prompt = caption, reference = the same-named file in ``reference_dir``), and logs
    each metric's mean over them as ``test/<metric>`` at the end of the test epoch.

    The metrics are built when testing starts; those whose weights or inputs are missing are
    skipped with a warning saying why. The videos are the ``videos`` (``{mp4 path: caption}``)
    of each test step's output.

    Args:
        metrics: ``eval.metrics`` names (None: every metric).
        weights: ``{weights key: local file}`` for those metrics (``python -m eval.run --help``
            lists the keys and files).
        reference_dir: folder of same-named reference videos (e.g. the ``test/test_samples`` of
            the full-attention run) for psnr, ssim and lpips.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        metrics: Optional[list[str]] = None,
        weights: Optional[dict[str, str]] = None,
        reference_dir: Optional[str] = None,
    ) -> None:
        self.names = metrics
        self.weights = weights
        self.reference_dir = None if reference_dir is None else Path(reference_dir)
        self._ready: dict[str, Metric] = {}
        self._scores: dict[str, list[float]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        items = [f"{key}={path}" for key, path in (self.weights or {}).items()]
        options = Options(weights=parse_weights(items))
        has_reference = self.reference_dir is not None
        self._ready, unavailable = build_metrics(
            self.names or list(METRICS), options, has_reference, True
        )
        for name, reason in unavailable.items():
            rank_zero_warn(f"test metric {name} skipped: {reason}")
        self._scores = {name: [] for name in self._ready}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: dict[str, Any],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._ready:
            return
        for path, caption in outputs["videos"].items():
            sample = read_sample(path, self.reference_dir, caption)
            for name, metric in self._ready.items():
                self._scores[name].append(metric(sample))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, scores in self._scores.items():
            if scores:
                pl_module.log(f"test/{name}", math.fsum(scores) / len(scores))
