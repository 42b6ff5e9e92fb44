"""``metrics.json``: what a fit of :class:`~vmoba.flow_matching.VMoBAFlowMatching` did, in one file
beside its checkpoints."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

DEFINITIONS = dict(
    train_steps="optimizer steps run, resumed fits included (a step run again "
    "after resuming from an earlier checkpoint counts again)",
    train_loss="mean training loss over those steps (rank 0's batches)",
    train_loss_last="the last step's training loss",
    val_loss_start="validation loss before the run's first step",
    median_step_s="median seconds a step of the last fit, its first 10% left out",
    tokens_per_s="video tokens over the seconds of the run's steps (rank 0)",
    density="kept density per layer kind at the last step",
)
"""What the less obvious entries of ``metrics.json`` mean; written into it."""


def skipped_videos(datamodule: Any) -> dict[str, int]:
    """Unreadable or too-short videos each split skipped (main process only), with a warning
    when there are any."""
    splits = {
        "train": getattr(datamodule, "train_dataset", None),
        "val": getattr(datamodule, "val_dataset", None),
    }
    counts = {name: len(ds.skipped) for name, ds in splits.items() if ds is not None}
    if any(counts.values()):
        rank_zero_warn(f"skipped unreadable or too-short videos: {counts} (see the warnings above)")
    return counts


class RunSummary(Callback):
    """Times every training step and logs ``train/tokens_per_s``; notes the mean validation loss
    of the sanity check (before any step) and of the latest validation; at the end of ``fit``,
    rank 0 writes ``<run dir>/metrics.json``: step count, training loss (mean and last),
    validation loss (start and end), kept densities, speed, skipped videos and ``definitions``.

    A resumed fit adds its totals to the earlier summary's and keeps its ``val_loss_start``; one
    that trains no step (a finished run resumed) leaves the summary as it was.
    """

    def __init__(self) -> None:
        self.val_loss_start: Optional[float] = None
        self.val_loss_end: Optional[float] = None
        self._step_seconds: list[float] = []
        self._step_tokens: list[int] = []
        self._val_losses: list[torch.Tensor] = []
        self._loss_sum: Optional[torch.Tensor] = None  # over this fit's steps, on the device
        self._step_start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: dict[str, torch.Tensor],
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        seconds = time.perf_counter() - self._step_start
        self._step_seconds.append(seconds)
        grid = pl_module.dit.latent_grid(pl_module.batch_latent_shape(batch))
        tokens = math.prod(grid) * len(batch["caption"])
        self._step_tokens.append(tokens)
        pl_module.log("train/tokens_per_s", tokens / seconds, prog_bar=True)
        # Lightning hands on the loss divided by accumulate_grad_batches. No host sync here: the
        # sum is read once, at the end.
        loss = outputs["loss"].float() * trainer.accumulate_grad_batches
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: torch.Tensor,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._val_losses.append(outputs.detach())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mean = trainer.strategy.reduce(torch.stack(self._val_losses).mean(), reduce_op="mean")
        mean = mean.item()  # over all ranks
        self._val_losses.clear()
        if trainer.sanity_checking:
            self.val_loss_start = mean  # before any training step
        else:
            self.val_loss_end = mean

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = pl_module.run_dir  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        path = run_dir / "metrics.json"
        earlier = json.loads(path.read_text()) if path.is_file() else None  # a resumed run's
        steps = len(self._step_seconds)
        if steps == 0 and earlier is not None:
            return
        totals = dict(
            train_steps=steps,
            train_loss_sum=self._loss_sum.item() if steps else 0.0,
            train_tokens=sum(self._step_tokens),
            train_seconds=sum(self._step_seconds),
        )
        val_loss_start = self.val_loss_start
        if earlier is not None:
            totals = {k: v + earlier.get(k, 0) for k, v in totals.items()}
            val_loss_start = earlier.get("val_loss_start")
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        steady = self._step_seconds[steps // 10 :] or self._step_seconds
        run_steps = totals["train_steps"]
        summary = dict(
            global_step=trainer.global_step,
            train_loss=totals["train_loss_sum"] / run_steps if run_steps else None,
            train_loss_last=metrics.get("train/loss"),
            val_loss_start=val_loss_start,
            val_loss_end=self.val_loss_end,
            density={
                k: metrics[f"train/density_{k}"]
                for k in ("1d", "2d", "3d")
                if f"train/density_{k}" in metrics
            },
            attention=pl_module.settings.mode,
            median_step_s=float(np.median(steady)) if steady else None,
            tokens_per_s=totals["train_tokens"] / totals["train_seconds"] if run_steps else None,
            skipped_videos=skipped_videos(trainer.datamodule),
            **totals,
            definitions=DEFINITIONS,
        )
        path.write_text(json.dumps(summary, indent=1) + "\n")
