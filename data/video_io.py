"""Encoding RGB frame arrays to mp4 with PyAV (decoding is done by the dataset, via decord)."""

from pathlib import Path

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
