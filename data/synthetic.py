"""Deterministic synthetic video dataset: coloured shapes moving over a dark background.

Generated on first use into a cache folder laid out as::

    root/clips/clip_00000.mp4 ...   # [T, size, size] RGB clips at FPS
    root/train.jsonl, root/val.jsonl  # {"path": "clips/clip_00000.mp4", "caption": "..."}
    root/.complete.json             # written last; records the generation parameters
"""

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.fsutil import atomic_output
from data.video_io import write_mp4

FORMAT_VERSION = 1  # bump whenever rendering changes, so existing caches are regenerated
FPS = 8
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "cyan": (40, 210, 220),
    "magenta": (210, 50, 210),
    "orange": (240, 140, 30),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}  # (dx, dy); y points down
MARKER = ".complete.json"


@dataclass(frozen=True)
class SyntheticManifests:
    """JSONL manifests of the generated train and validation splits."""

    train: Path
    val: Path


@dataclass(frozen=True)
class _Sprite:
    """A shape whose centre moves ``travel`` pixels from ``start`` along ``direction`` over the clip."""

    colour: str
    shape: str
    direction: str
    radius: float
    start: tuple[float, float]  # (x, y) centre in pixels at the first frame
    travel: float

    @property
    def caption(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} moving {self.direction}"

    def mask(self, progress: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """Boolean [size, size] coverage at ``progress`` in [0, 1] through the clip."""
        dx, dy = DIRECTIONS[self.direction]
        cx = self.start[0] + dx * self.travel * progress
        cy = self.start[1] + dy * self.travel * progress
        r = self.radius
        if self.shape == "circle":
            return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        if self.shape == "square":
            return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        # Upward-pointing triangle: apex at (cx, cy - r), base of width 2r at y = cy + r.
        return (yy <= cy + r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)


def ensure_synthetic_dataset(
    root: str | Path,
    *,
    num_clips: int = 256,
    num_frames: int = 24,
    size: int = 64,
    val_fraction: float = 0.125,
    seed: int = 0,
) -> SyntheticManifests:
    """Generate the dataset into ``root`` unless a complete one with these parameters is there.

    Clip ``i`` is drawn from a generator seeded with ``(seed, i)``, so regeneration reproduces
    the same content; the train/val split is a seeded permutation. Every file is written
    atomically and the marker last, so an interrupted run is simply redone by the next call.

    Args:
        root: cache folder (``~`` is expanded); created if needed.
        num_clips: number of clips, >= 2.
        num_frames: frames per clip T, >= 2.
        size: frame height and width in pixels; even and >= 16.
        val_fraction: share of clips in the validation split; both splits must be non-empty.
        seed: non-negative seed for content and split.

    Returns:
        Paths of the train and val JSONL manifests.
    """
    num_val = _validate(num_clips, num_frames, size, val_fraction, seed)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "format_version": FORMAT_VERSION,
        "num_clips": num_clips,
        "num_frames": num_frames,
        "size": size,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    manifests = SyntheticManifests(train=root / "train.jsonl", val=root / "val.jsonl")
    marker = root / MARKER
    with _exclusive_lock(root / ".lock"):
        if _read_json(marker) == params:
            return manifests
        marker.unlink(missing_ok=True)  # a regeneration cut short must not look complete
        captions = _write_clips(root / "clips", num_clips, num_frames, size, seed)
        val_ids = set(np.random.default_rng(seed).permutation(num_clips)[:num_val].tolist())
        for manifest, in_val in ((manifests.train, False), (manifests.val, True)):
            lines = [
                json.dumps({"path": f"clips/{name}", "caption": caption})
                for i, (name, caption) in enumerate(captions)
                if (i in val_ids) == in_val
            ]
            _write_text(manifest, "\n".join(lines) + "\n")
        _write_text(marker, json.dumps(params, sort_keys=True))
    return manifests


def _validate(num_clips: int, num_frames: int, size: int, val_fraction: float, seed: int) -> int:
    """Check the arguments; return the number of validation clips."""
    if num_clips < 2:
        raise ValueError(f"num_clips must be >= 2, got {num_clips}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 so shapes can move, got {num_frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    num_val = round(num_clips * val_fraction)
    if not 0 < num_val < num_clips:
        raise ValueError(
            f"val_fraction must leave both splits non-empty (0 < round(num_clips * val_fraction) "
            f"< num_clips), got val_fraction={val_fraction} with num_clips={num_clips}"
        )
    return num_val


def _write_clips(
    clips_dir: Path, num_clips: int, num_frames: int, size: int, seed: int
) -> list[tuple[str, str]]:
    """Render and encode every clip; return (file name, caption) pairs in clip order."""
    clips_dir.mkdir(exist_ok=True)
    names = [f"clip_{i:05d}.mp4" for i in range(num_clips)]
    # Drop clips left by a larger earlier generation and temporaries of crashed runs.
    for stale in clips_dir.iterdir():
        if stale.is_file() and stale.name not in names:
            stale.unlink()
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    captions = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        background = int(rng.integers(10, 40))
        sprites = _sample_sprites(rng, size)
        frames = np.full((num_frames, size, size, 3), background, dtype=np.uint8)
        for t, frame in enumerate(frames):
            for sprite in sprites:
                frame[sprite.mask(t / (num_frames - 1), xx, yy)] = COLOURS[sprite.colour]
        write_mp4(clips_dir / name, frames, fps=FPS)
        captions.append((name, " and ".join(sprite.caption for sprite in sprites)))
    return captions


def _sample_sprites(rng: np.random.Generator, size: int) -> list[_Sprite]:
    """One or two shapes of distinct colours, each staying fully inside the frame."""
    count = int(rng.integers(1, 3))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    sprites = []
    for colour in colours:
        shape = SHAPES[rng.integers(len(SHAPES))]
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        radius = size * rng.uniform(0.1, 0.18)
        span = size - 2 * radius  # range of centre positions keeping the shape visible
        travel = span * rng.uniform(0.5, 0.9)
        along = radius + rng.uniform(0, span - travel)  # low end of the travelled interval
        across = rng.uniform(radius, size - radius)
        dx, dy = DIRECTIONS[direction]
        if dx + dy < 0:  # moving left or up: start at the high end
            along += travel
        start = (along, across) if dx else (across, along)
        sprites.append(_Sprite(str(colour), shape, direction, radius, start, travel))
    return sprites


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise check-and-generate across processes sharing a cache (e.g. one per node)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
