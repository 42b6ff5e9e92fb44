"""Map-style dataset of fixed-length clips decoded with decord from a manifest."""

import math
import operator
import warnings
from pathlib import Path
from typing import TypedDict

import decord
import numpy as np
import torch
from torch.utils.data import Dataset

from data.manifest import ManifestEntry, read_manifest
from data.transforms import resize_center_crop


class BadVideoWarning(UserWarning):
    """A manifest entry could not be decoded into a clip and is skipped."""


class VideoSample(TypedDict):
    video: torch.Tensor  # float32 [C=3, T, H, W] in [-1, 1]
    caption: str
    index: int  # manifest row the sample came from (may differ from the requested index)


class _BadVideo(Exception):
    """Internal: the file at hand is unusable; the message is the reason."""


def validate_clip_args(
    num_frames: int, frame_stride: int, resolution: tuple[int, int] | list[int]
) -> None:
    """Raise ValueError naming the argument if a clip-shape argument is out of range."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be an int >= 1, got {frame_stride!r}")
    if (
        not isinstance(resolution, (tuple, list))
        or len(resolution) != 2
        or not all(isinstance(side, int) and side >= 1 for side in resolution)
    ):
        raise ValueError(
            f"resolution must be (height, width) with two positive ints, got {resolution!r}"
        )


class VideoClipDataset(Dataset[VideoSample]):
    """Clips of ``num_frames`` frames, ``frame_stride`` apart, resized and centre-cropped.

    Item ``i`` starts at a frame drawn from a generator seeded with ``(seed, i)``, so the same
    (seed, index) always yields the same sample. Rows are checked lazily: a missing,
    undecodable or too-short clip (file or segment) triggers one :class:`BadVideoWarning`, is
    remembered in :attr:`skipped`, and the next usable row (scanning forward, wrapping around) is
    returned instead. The record is per process: each DataLoader worker keeps (and warns from) its own.

    Args:
        manifest: ``.csv`` (header with ``path,caption``) or ``.jsonl`` (objects with ``path``
            and ``caption``); relative paths are relative to the manifest's folder.
            Optional ``start_sec`` / ``end_sec`` restrict a row to that segment of its video.
        num_frames: frames per clip T, >= 1 (4n + 1 for the Wan VAE).
        frame_stride: step between sampled frames, >= 1; a clip spans
            ``(num_frames - 1) * frame_stride + 1`` source frames.
        resolution: output (height, width), positive.
        seed: non-negative seed for the clip start frames.
        target_fps: sample at this frame rate instead: the stride of each video becomes
            ``max(1, round(video_fps / target_fps))``.
    """

    def __init__(
        self,
        manifest: str | Path,
        num_frames: int,
        frame_stride: int = 1,
        resolution: tuple[int, int] = (32, 32),
        seed: int = 0,
        target_fps: float | None = None,
    ) -> None:
        validate_clip_args(num_frames, frame_stride, resolution)
        if target_fps is not None and not target_fps > 0:
            raise ValueError(f"target_fps must be a number > 0 or None, got {target_fps!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.manifest = Path(manifest)
        self.entries = read_manifest(manifest)
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.resolution = tuple(resolution)
        self.seed = seed
        self.target_fps = target_fps
        self._bad: dict[int, Path] = {}  # manifest row -> its file (rows can be segments of one file)

    @property
    def skipped(self) -> list[Path]:
        """Files of the unusable manifest rows met so far in this process, sorted (one per row)."""
        return sorted(self._bad.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> VideoSample:
        index = operator.index(index)
        count = len(self.entries)
        if not 0 <= index < count:
            raise IndexError(f"index {index} out of range for {count} entries")
        for offset in range(count):
            sample = self.clip((index + offset) % count)
            if sample is not None:
                return sample
        raise RuntimeError(
            f"none of the {count} videos in manifest {self.manifest} is usable for clips of "
            f"{self.num_frames} frames; see the BadVideoWarning messages for each file"
        )

    def clip(self, row: int) -> VideoSample | None:
        """The clip of manifest ``row``, or None if the row is unusable (then remembered in
        :attr:`skipped`, with one :class:`BadVideoWarning`). ``__getitem__`` falls through to the
        next usable row instead; ``python -m vmoba.preprocess`` takes each row once."""
        entry = self.entries[row]
        if row in self._bad:
            return None
        try:
            video = self._load(row, entry)
        except _BadVideo as err:
            self._bad[row] = entry.path
            warnings.warn(f"skipping video {entry.path}: {err}", BadVideoWarning, stacklevel=3)
            return None
        return {"video": video, "caption": entry.caption, "index": row}

    def _load(self, row: int, entry: ManifestEntry) -> torch.Tensor:
        """Decode the clip of manifest ``row``: float [C, T, H, W] in [-1, 1]."""
        if not entry.path.is_file():
            raise _BadVideo("file not found")
        try:
            reader = decord.VideoReader(str(entry.path), num_threads=1)
            fps, total = reader.get_avg_fps(), len(reader)
            stride = self.frame_stride
            if self.target_fps is not None:
                stride = max(1, round(fps / self.target_fps))
            first = 0 if entry.start_sec is None else math.ceil(entry.start_sec * fps)
            last = total if entry.end_sec is None else min(total, math.floor(entry.end_sec * fps))
            span = (self.num_frames - 1) * stride + 1
            if last - first < span:
                raise _BadVideo(
                    f"too short: {max(0, last - first)} frames in the clip's segment, need {span} "
                    f"(num_frames={self.num_frames}, frame stride {stride})"
                )
            start = first + int(np.random.default_rng([self.seed, row]).integers(last - first - span + 1))
            frames = reader.get_batch(list(range(start, start + span, stride))).asnumpy()  # [T, H, W, 3]
        except (RuntimeError, decord.DECORDError) as err:
            raise _BadVideo(f"cannot decode ({err})") from err
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, C, H, W]
        video = resize_center_crop(video, self.resolution) / 127.5 - 1.0
        # Float rounding in the resize can step a hair outside [-1, 1].
        return video.clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()
