"""Checkpoints that survive interruptions: written atomically (a crash mid-save never leaves a
truncated ``last.ckpt``), and ``last.ckpt`` when training ends or SIGTERM (a cluster's time
limit) stops it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data.fsutil import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then ``os.replace`` onto it (the same
    file system, so the rename is atomic; Lightning's default stages in the system temp dir)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Optional[Any] = None
    ) -> None:
        path = Path(path)
        get_filesystem(path).makedirs(str(path.parent), exist_ok=True)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(Callback):
    """``<dirpath>/last.ckpt`` when training ends and on SIGTERM, so ``--ckpt_path last`` resumes
    from where the run stopped: the periodic checkpoints fall on multiples of their interval,
    and a cluster's time limit comes between them. On SIGTERM Lightning finishes the current step,
    then raises ``SIGTERMException``; other exceptions save nothing (their step may be half done).

    Args:
        dirpath: the run's checkpoint folder.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._first_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._first_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > self._first_step:  # a finished run resumed keeps its checkpoint
            trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)
