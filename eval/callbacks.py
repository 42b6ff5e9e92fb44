"""Lightning callbacks of the eval layer: ``main.py`` adds :class:`TestVideoMetrics` to every
command (configured under ``test_metrics``); a config lists :class:`TrainingCurve` (the
pre-training ones do)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from eval.flops import LAYER_KINDS, forward_tflops
from eval.metrics import METRICS, Metric, Options
from eval.metrics.video import read_sample
from eval.run import build_metrics, parse_weights
from vmoba.attention.partition import block_partition

CURVE_FILE = "curve.jsonl"


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


def step_tflops(pl_module: L.LightningModule, grid: tuple[int, int, int], clips: int,
                density: Optional[tuple[float, float, float]]) -> float:
    """Training TFLOPs of one step (forward and backward: 3x the forward of
    :func:`eval.flops.forward_tflops`) of ``pl_module``'s DiT on ``clips`` clips of ``grid``
    tokens, VMoBA layers at their kinds' mean kept ``density`` (None: full attention)."""
    config = pl_module.dit.transformer.config
    shape = dict(
        text_len=pl_module.text_encoder.max_length,
        layers=config.num_layers,
        dim=config.num_attention_heads * config.attention_head_dim,
        ffn=config.ffn_dim,
    )
    tokens = math.prod(grid)
    if density is None:
        return 3 * clips * forward_tflops(tokens, attention="full", **shape)
    settings = pl_module.settings
    blocks = tuple(block_partition(grid, settings.block(k)).num_blocks for k in LAYER_KINDS)
    return 3 * clips * forward_tflops(
        tokens, attention="vmoba", blocks=blocks, density=density, **shape
    )


class TrainingCurve(Callback):
    """The validation curve of a fit, one JSON line per validation in ``<run dir>/curve.jsonl``
    (rank 0), also logged as ``curve/*``:

    - ``step``: optimizer steps behind the weights validated (0: the sanity check before training);
    - ``val_loss``: mean validation loss (over ranks);
    - ``tokens_seen``: video tokens trained on (rank 0's batches times the data-parallel size);
    - ``train_tflops``: training FLOPs so far, in TFLOPs, by :func:`step_tflops` with each VMoBA
      step's measured kept density (the FLOPs are linear in it, so its running mean per layer
      kind gives the exact sum);
    - ``wall_s``: seconds since the fit started (validation and sampling included);
    - ``density``: mean kept density per layer kind over the steps so far (VMoBA only).

    A resumed fit starts its counts again from the checkpoint's step: the curve of a run that
    resumed restarts its ``tokens_seen``, ``train_tflops`` and ``wall_s``.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._steps = 0
        self._tokens = 0
        self._grid: Optional[tuple[int, int, int]] = None
        self._clips = 0
        self._density_sum: Optional[torch.Tensor] = None  # [3] on the device
        self._losses: list[torch.Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        self._grid = pl_module.dit.latent_grid(pl_module.batch_latent_shape(batch))
        self._clips = len(batch["caption"]) * trainer.world_size // pl_module.dit.sequence_size
        self._steps += 1
        self._tokens += math.prod(self._grid) * self._clips
        densities = pl_module.dit.densities()
        if densities:  # no host sync: summed on the device, read at validation
            step = torch.stack([densities[k].float() for k in LAYER_KINDS])
            self._density_sum = step if self._density_sum is None else self._density_sum + step

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: torch.Tensor, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._losses.append(outputs.detach().float())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.strategy.reduce(torch.stack(self._losses).mean(), reduce_op="mean").item()
        self._losses.clear()
        density = None
        if self._density_sum is not None:
            density = tuple((self._density_sum / self._steps).tolist())
        tflops = 0.0
        if self._steps:
            tflops = self._steps * step_tflops(pl_module, self._grid, self._clips, density)
        row = dict(
            step=pl_module.trained_steps,
            val_loss=loss,
            tokens_seen=self._tokens,
            train_tflops=tflops,
            wall_s=time.perf_counter() - self._start,
            density=None if density is None else dict(zip(LAYER_KINDS, density)),
        )
        for key in ("tokens_seen", "train_tflops", "wall_s"):
            pl_module.log(f"curve/{key}", float(row[key]), rank_zero_only=True)
        path = pl_module.run_dir / CURVE_FILE  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
