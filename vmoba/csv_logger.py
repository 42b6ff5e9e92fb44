"""A CSV logger that keeps a run's earlier rows: a resumed run appends to its ``metrics.csv``."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv`` when it starts; this one reads its
    header instead, so new rows append under the same columns (new columns rewrite the header
    and keep every row)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments) whose ``metrics.csv`` survives a resumed or repeated run in
    the same folder: rows are appended, never deleted."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
