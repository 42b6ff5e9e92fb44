"""Decode throughput of the video DataModule's dataset, one process (= one DataLoader worker).

    python -m eval.bench.decode --out eval/results/decode_cpu.json

Writes a synthetic source video (97 frames at 16 fps, moving gradient, 480x832 by default) and times
``VideoClipDataset`` decoding, resizing and cropping 81-frame clips from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from data.video_dataset import VideoClipDataset
from data.video_io import write_mp4


def synthetic_video(path: Path, frames: int, height: int, width: int, fps: int) -> None:
    """A diagonal gradient scrolling one pixel per frame (compresses like real footage, not noise)."""
    yy, xx = np.mgrid[0:height, 0:width]
    video = np.stack([((xx + yy + 4 * t) % 256) for t in range(frames)]).astype(np.uint8)
    write_mp4(path, np.repeat(video[..., None], 3, axis=-1), fps=fps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 832], metavar=("H", "W"))
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("eval/results/decode_cpu.json"))
    args = parser.parse_args()
    height, width = args.size
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.mp4"
        synthetic_video(source, args.frames + 16, height, width, fps=16)
        manifest = Path(tmp) / "clips.csv"
        manifest.write_text("path,caption\n" + "source.mp4,clip\n" * args.clips)
        dataset = VideoClipDataset(manifest, num_frames=args.frames, resolution=(height, width))
        dataset[0]  # warm-up: library loading
        start = time.perf_counter()
        for i in range(args.clips):
            assert dataset[i]["video"].shape == (3, args.frames, height, width)
        seconds = (time.perf_counter() - start) / args.clips
    record = dict(
        frames=args.frames, height=height, width=width, seconds_per_clip=round(seconds, 3),
        clips_per_s_per_worker=round(1 / seconds, 3), codec="mpeg4 (PyAV)", decoder="decord",
        machine=platform.machine(), date=datetime.date.today().isoformat(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
