"""Progress bars: plain lines for output that is not a terminal (nohup, SLURM, CI logs), and
Lightning's rich bar counting steps for runs bounded by ``max_steps``."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


class StepRichProgressBar(RichProgressBar):
    """Lightning's rich bar, described as ``Epoch 0 of max_steps 300`` where ``max_steps`` bounds
    the run: Lightning's own description reads ``Epoch 0/-2`` when ``max_epochs`` is unset."""

    def _get_train_description(self, current_epoch: int) -> str:
        steps = self.trainer.max_steps
        if steps is None or steps < 0:
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch} of max_steps {steps}"


class LineProgressBar(ProgressBar):
    """Prints one line at most every ``interval_s`` seconds while training, validating, testing or
    predicting, and one when each stage ends: the step or batch out of the total, the progress-bar
    metrics (loss, tokens/s), seconds per step and the time left. A redrawn bar prints nothing
    useful into a file; these lines do.

    Args:
        interval_s: seconds between lines within a stage.
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._enabled = True
        self._started = self._last = self._validation_start = 0.0
        self._first_step = 0  # of this run: a resumed run starts past 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _begin(self) -> None:
        self._started = self._last = time.monotonic()

    def _due(self, force: bool = False) -> bool:
        """Whether a line prints now (then the clock restarts): the text is built only then."""
        now = time.monotonic()
        if not (self._enabled and self.trainer.is_global_zero):
            return False
        if force or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False

    @staticmethod
    def _print(text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def _metrics(self, pl_module: Any) -> str:
        items = self.get_metrics(self.trainer, pl_module)
        items.pop("v_num", None)
        return "".join(
            f" | {k} {v:.4g}" if isinstance(v, float) else f" | {k} {v}" for k, v in items.items()
        )

    def on_train_start(self, trainer, pl_module) -> None:
        self._begin()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if not self._due(force=step == total):
            return
        per_step = (time.monotonic() - self._started) / max(1, step - self._first_step)
        left = f" | {per_step * (total - step) / 60:.1f} min left" if total and total > 0 else ""
        of = f"/{total}" if total and total > 0 else ""
        self._print(f"step {step}{of}{self._metrics(pl_module)} | {per_step:.2f} s/step{left}")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._due(force=True):
            seconds = time.monotonic() - self._validation_start
            # the weights' step: validate's own counter is 0 (VMoBAFlowMatching.trained_steps)
            step = getattr(pl_module, "trained_steps", trainer.global_step)
            self._print(f"validation at step {step} done in {seconds:.0f} s"
                        f"{self._metrics(pl_module)}")

    def _batch_line(self, stage: str, batch_idx: int, total: Any) -> None:
        if self._due():
            of = f"/{int(total)}" if total not in (None, float("inf")) else ""
            self._print(f"{stage} batch {batch_idx + 1}{of}")

    def on_test_start(self, trainer, pl_module) -> None:
        self._begin()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_line("test", batch_idx, trainer.num_test_batches[dataloader_idx])

    def on_predict_start(self, trainer, pl_module) -> None:
        self._begin()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_line("predict", batch_idx, trainer.num_predict_batches[dataloader_idx])

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._due(force=True):
            self._print(f"predict done in {time.monotonic() - self._started:.0f} s")
