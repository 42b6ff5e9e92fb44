"""Encoding RGB frame arrays to mp4 with PyAV (decoding is done by the dataset, via decord), and
the ``settings.json`` that lists a folder of sampled videos with how they were made."""

import json
from pathlib import Path
from typing import Any

import av
import numpy as np

from data.fsutil import atomic_output

# FFmpeg's native MPEG-4 Part 2 encoder ships in every av wheel and its output is
# byte-for-byte reproducible; the libx264 in the av 18.1 wheel gave different pixels for
# identical input from run to run, even single-threaded.
CODEC = "mpeg4"
# Far above what small clips need, so the encoder sits at its finest quantiser and the
# loss is dominated by yuv420p chroma subsampling.
BIT_RATE = 4_000_000


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Atomically write ``frames`` as a yuv420p mp4 at ``path``.

    Args:
        path: destination file; it appears only once fully written.
        frames: uint8 RGB array of shape [T, H, W, 3] with even H and W (yuv420p halves chroma).
        fps: frame rate stored in the container.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {height}x{width}")
    # The temporary name has no .mp4 suffix, so the container format is given explicitly.
    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = BIT_RATE
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush delayed frames


SETTINGS_FILE = "settings.json"  # beside sampled videos: how they were made (eval.run reads it)


def record_samples(folder: Path, settings: dict[str, Any], videos: list[dict[str, Any]]) -> None:
    """Write ``folder/settings.json``: ``settings`` (checkpoint, scheduler, steps, guidance, seed,
    ...) and ``videos``, one ``{"file", "prompt", ...}`` per mp4 in ``folder``.

    Videos of an earlier call with equal ``settings`` are kept (an entry for the same file is
    replaced), so a folder filled batch by batch lists every video; different settings start a
    new list. Written atomically.
    """
    path = folder / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as read back: tuples become lists
    earlier = read_sample_settings(folder) or {}
    listed = earlier.pop("videos", [])
    if earlier != settings:
        listed = []
    by_file = {video["file"]: video for video in [*listed, *videos]}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({**settings, "videos": list(by_file.values())}, indent=1) + "\n")


def read_sample_settings(folder: Path) -> dict[str, Any] | None:
    """The ``settings.json`` that :func:`record_samples` wrote in ``folder``, or None."""
    path = folder / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
