"""Encode a manifest's clips once into a latent cache: video posteriors + caption embeddings.

The encoders are handed in (``python -m vmoba.preprocess`` hands in Wan's VAE and UMT5), so the
data layer knows only what it calls: :class:`VideoEncoder` and :class:`CaptionEncoder`. Clips are
decoded by ``VideoClipDataset``, so the start frame of each clip is the one raw training would
take with the same seed, and missing, corrupt or too-short files are skipped (one warning each)
and listed in the index. Shards cover ``shard_size`` manifest rows each and are written
atomically; a rerun skips the finished ones (a changed setting or manifest is refused: use a new
``out``), then writes ``index.json``. See ``data.latent_cache`` for the format.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.fsutil import atomic_output, file_sha256
from data.latent_cache import (
    FORMAT_VERSION,
    INDEX,
    read_shard_header,
    shard_name,
    trim_text,
    write_shard,
)
from data.video_dataset import VideoClipDataset, VideoSample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class VideoEncoder(Protocol):
    """Maps a video to the posterior of its latent (e.g. ``vmoba.model.vae.LatentCodec``)."""

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, T', H', W')`` of the latent of a ``(3, T, H, W)`` video."""

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``[1, C, T', H', W']`` of a video ``[1, 3, T, H, W]`` in [-1, 1]."""


class CaptionEncoder(Protocol):
    """Maps captions to padded embeddings ``[N, L, out_dim]`` (e.g. ``vmoba.text.TextEncoder``)."""

    out_dim: int

    def __call__(self, captions: list[str]) -> torch.Tensor: ...


# Builds the encoders, in a dtype, on the device they run on; called only when a shard is due.
LoadEncoders = Callable[[torch.dtype], tuple[VideoEncoder, CaptionEncoder]]


class _Rows(Dataset[tuple[int, "VideoSample | None"]]):
    """``(row, clip or None)`` for each of ``rows``: every row once, no falling through."""

    def __init__(self, dataset: VideoClipDataset, rows: list[int]) -> None:
        self.dataset = dataset
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, VideoSample | None]:
        return self.rows[i], self.dataset.clip(self.rows[i])


def _unbatched(item: Any) -> Any:
    """The DataLoader's collate function: items pass as they are (a module-level function, so
    worker processes can unpickle it)."""
    return item


def preprocess(
    manifest: str | Path,
    out: str | Path,
    load_encoders: LoadEncoders,
    *,
    sources: dict[str, str],
    num_frames: int,
    resolution: tuple[int, int],
    frame_stride: int = 1,
    target_fps: float | None = None,
    seed: int = 0,
    text_max_length: int = 512,
    shard_size: int = 32,
    device: str = "cpu",
    dtype: str = "float32",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Write (or complete) the latent cache of ``manifest`` in ``out``; return a summary.

    Args:
        manifest: CSV or JSONL manifest (as ``--data.train_manifest``).
        out: cache folder, created if needed.
        load_encoders: builds the video and caption encoders in a dtype, on ``device``; not
            called when every shard is already written.
        sources: where the encoders came from, recorded in ``index.json`` (e.g. ``vae_path``).
        num_frames, resolution, frame_stride, target_fps, seed: the clips, as in
            ``VideoClipDataset``.
        text_max_length: tokens per caption (as ``--model.text_max_length``).
        shard_size: manifest rows per shard, >= 1.
        device: where the encoders run (videos are moved there).
        dtype: their dtype, a key of ``DTYPES``; the cache stores tensors in it.
        num_workers: DataLoader processes decoding clips, >= 0.

    Returns:
        ``encoded`` (clips encoded by this call), ``clips`` (in the cache), ``skipped`` (rows),
        ``shards_written``, ``shards_reused``, ``seconds`` (decoding and encoding, after loading
        the models).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if text_max_length < 1:
        raise ValueError(f"text_max_length must be >= 1, got {text_max_length}")
    dataset = VideoClipDataset(
        manifest, num_frames, frame_stride, tuple(resolution), seed=seed, target_fps=target_fps
    )
    settings = dict(
        format_version=FORMAT_VERSION,
        manifest_sha256=file_sha256(dataset.manifest),
        num_frames=num_frames,
        frame_stride=frame_stride,
        target_fps=target_fps,
        resolution=list(resolution),
        seed=seed,
        text_max_length=text_max_length,
        shard_size=shard_size,
        dtype=dtype,
    )
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(dataset) / shard_size)
    headers = {}
    for shard in range(num_shards):
        path = out / shard_name(shard)
        if path.is_file():
            headers[shard] = read_shard_header(path)
            if headers[shard]["settings"] != settings:
                raise ValueError(
                    f"--out {out} holds {path.name} made with other settings or another manifest "
                    f"({headers[shard]['settings']}, now {settings}): use a new --out"
                )
    pending = [s for s in range(num_shards) if s not in headers]
    encoded, seconds = 0, 0.0
    if pending:
        encoded, seconds = _encode_shards(
            dataset, out, pending, settings, load_encoders, device, num_workers
        )
        for shard in pending:
            headers[shard] = read_shard_header(out / shard_name(shard))
    index = _index(dataset, headers, settings, sources)
    with atomic_output(out / INDEX) as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n")
    return dict(
        encoded=encoded,
        clips=index["clips"],
        skipped=len(index["skipped"]),
        shards_written=len(pending),
        shards_reused=num_shards - len(pending),
        seconds=seconds,
    )


def _encode_shards(
    dataset: VideoClipDataset,
    out: Path,
    shards: list[int],
    settings: dict[str, Any],
    load_encoders: LoadEncoders,
    device: str,
    num_workers: int,
) -> tuple[int, float]:
    """Decode and encode the rows of ``shards``, writing each shard once complete; return the
    number of clips encoded and the seconds it took (after loading the models)."""
    dtype = DTYPES[settings["dtype"]]
    codec, text_encoder = load_encoders(dtype)
    latent_shape = codec.latent_shape((3, settings["num_frames"], *settings["resolution"]))
    size, total = settings["shard_size"], len(dataset)
    rows = [row for shard in shards for row in range(shard * size, min((shard + 1) * size, total))]
    loader = DataLoader(
        _Rows(dataset, rows), batch_size=None, num_workers=num_workers, collate_fn=_unbatched
    )
    encoded = skipped_total = 0
    start = time.perf_counter()
    means, stds, done, captions, skipped = [], [], [], [], []
    with tqdm(total=len(rows), unit="clip", desc=f"preprocess {out}") as bar:
        for row, sample in loader:
            if sample is None:
                skipped.append({"row": row, "path": str(dataset.entries[row].path)})
                skipped_total += 1
            else:
                mean, std = codec.posterior(sample["video"].unsqueeze(0).to(device))
                means.append(mean.cpu())
                stds.append(std.cpu())
                done.append(row)
                captions.append(sample["caption"])
                encoded += 1
            bar.update()
            bar.set_postfix(skipped=skipped_total)
            if row + 1 == min((row // size + 1) * size, total):  # the shard's last row
                empty = torch.empty((0, *latent_shape), dtype=dtype)
                text = (
                    trim_text(text_encoder(captions).cpu())
                    if captions
                    else torch.empty((0, 0, text_encoder.out_dim), dtype=dtype)
                )
                tensors = dict(
                    posterior_mean=torch.cat([empty, *means]),
                    posterior_std=torch.cat([empty, *stds]),
                    text=text,
                    rows=torch.tensor(done, dtype=torch.long),
                )
                write_shard(
                    out / shard_name(row // size),
                    tensors,
                    captions=captions,
                    skipped=skipped,
                    settings=settings,
                )
                means, stds, done, captions, skipped = [], [], [], [], []
    return encoded, time.perf_counter() - start


def _index(
    dataset: VideoClipDataset,
    headers: dict[int, dict[str, Any]],
    settings: dict[str, Any],
    sources: dict[str, str],
) -> dict[str, Any]:
    """The cache's ``index.json`` from the headers of all its shards."""
    ordered = [headers[shard] for shard in sorted(headers)]
    shards = [
        dict(file=shard_name(shard), rows=header["rows"], captions=header["captions"])
        for shard, header in sorted(headers.items())
    ]
    return dict(
        format_version=FORMAT_VERSION,
        manifest=str(dataset.manifest.resolve()),
        **sources,
        settings=settings,
        latent_shape=ordered[0]["latent_shape"],
        text_dim=ordered[0]["text_dim"],
        rows=len(dataset),
        clips=sum(len(header["rows"]) for header in ordered),
        skipped=[entry for header in ordered for entry in header["skipped"]],
        shards=shards,
    )


if __name__ == "__main__":
    raise SystemExit("python -m data.preprocess is now python -m vmoba.preprocess (same options)")
