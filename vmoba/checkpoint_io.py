"""Checkpoints written atomically: a crash mid-save never leaves a truncated ``last.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

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
