"""Reading videos and prompts from disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from eval.metrics.base import Sample


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode ``path`` with decord: uint8 RGB frames ``[T, H, W, 3]`` and the average fps."""
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch(range(len(reader))).asnumpy(), float(reader.get_avg_fps())


def read_sample(
    path: str | Path, reference_dir: str | Path | None = None, prompt: str | None = None
) -> Sample:
    """The video at ``path`` as a :class:`Sample` to score: its frames and fps, the same-named
    video of ``reference_dir`` as its reference (none without a folder) and ``prompt``."""
    frames, fps = read_video(path)
    reference = None
    if reference_dir is not None:
        reference = read_video(Path(reference_dir) / Path(path).name)[0]
    return Sample(frames=frames, fps=fps, reference=reference, prompt=prompt)


def read_prompts(path: str | Path, filenames: list[str]) -> dict[str, str]:
    """Prompts by video filename from ``path``.

    Formats: ``.json`` object {filename: prompt}; ``.csv`` with columns ``filename,prompt``;
    anything else is plain text, one prompt per line in the order of ``filenames`` (sorted).

    Raises:
        ValueError: a video has no prompt, or a line-per-prompt file has the wrong line count.
    """
    path = Path(path)
    if path.suffix == ".json":
        prompts = json.loads(path.read_text())
        if not isinstance(prompts, dict):
            raise ValueError(f"{path}: expected a JSON object mapping filename -> prompt")
    elif path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and not {"filename", "prompt"} <= set(rows[0]):
            raise ValueError(f"{path}: CSV needs columns filename,prompt, got {list(rows[0])}")
        prompts = {row["filename"]: row["prompt"] for row in rows}
    else:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(lines) != len(filenames):
            raise ValueError(f"{path}: {len(lines)} prompts for {len(filenames)} videos")
        prompts = dict(zip(filenames, lines))
    missing = [name for name in filenames if name not in prompts]
    if missing:
        raise ValueError(f"{path}: no prompt for {missing}")
    return {name: str(prompts[name]) for name in filenames}
