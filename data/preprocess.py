"""Encode a manifest's clips once into a latent cache: Wan VAE posteriors + caption embeddings.

    python -m data.preprocess --manifest train.csv --out cache/train \\
        --vae_path WAN_DIR --text_encoder_path WAN_DIR --text_max_length 512 \\
        --num_frames 93 --resolution 576 1024 [--frame_stride 1 | --target_fps 16] [--seed 0] \\
        [--shard_size 32 --device cuda --dtype bfloat16 --num_workers 4]

The clip flags mean what ``--data.*`` of ``python main.py fit`` mean, and must match them when
training from the cache (``--data.train_cache cache/train``); ``--text_max_length`` must match
``--model.text_max_length``. Clips are decoded by ``VideoClipDataset``, so the start frame of each
clip is the one raw training would take with the same seed, and missing, corrupt or too-short files
are skipped (one warning each) and listed in the index. Shards cover ``shard_size`` manifest rows
each and are written atomically; a rerun skips the finished ones (a changed setting or manifest is
refused: use a new ``--out``), then writes ``index.json``. See ``data.latent_cache`` for the format.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.fsutil import atomic_output
from data.latent_cache import (
    FORMAT_VERSION,
    INDEX,
    read_shard_header,
    shard_name,
    trim_text,
    write_shard,
)
from data.video_dataset import VideoClipDataset, VideoSample
from vmoba.model.vae import LatentCodec
from vmoba.text import TextEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (a manifest edited since the cache was made is refused)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preprocess(
    manifest: str | Path,
    out: str | Path,
    vae_path: str | Path,
    text_encoder_path: str | Path,
    *,
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
        vae_path: local Wan VAE (``AutoencoderKLWan`` folder or Wan pipeline root).
        text_encoder_path: local UMT5 encoder + tokenizer (Wan pipeline root or one folder).
        num_frames, resolution, frame_stride, target_fps, seed: the clips, as in
            ``VideoClipDataset``.
        text_max_length: tokens per caption (as ``--model.text_max_length``).
        shard_size: manifest rows per shard, >= 1.
        device: where the VAE and the text encoder run.
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
            dataset, out, pending, settings, vae_path, text_encoder_path, device, num_workers
        )
        for shard in pending:
            headers[shard] = read_shard_header(out / shard_name(shard))
    index = _index(dataset, headers, settings, vae_path, text_encoder_path)
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
    vae_path: str | Path,
    text_encoder_path: str | Path,
    device: str,
    num_workers: int,
) -> tuple[int, float]:
    """Decode and encode the rows of ``shards``, writing each shard once complete; return the
    number of clips encoded and the seconds it took (after loading the models)."""
    dtype = DTYPES[settings["dtype"]]
    codec = LatentCodec.from_pretrained(vae_path, dtype=dtype).to(device)
    text_encoder = TextEncoder.from_pretrained(
        text_encoder_path, max_length=settings["text_max_length"], dtype=dtype
    ).to(device)
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
    vae_path: str | Path,
    text_encoder_path: str | Path,
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
        vae_path=str(vae_path),
        text_encoder_path=str(text_encoder_path),
        settings=settings,
        latent_shape=ordered[0]["latent_shape"],
        text_dim=ordered[0]["text_dim"],
        rows=len(dataset),
        clips=sum(len(header["rows"]) for header in ordered),
        skipped=[entry for header in ordered for entry in header["skipped"]],
        shards=shards,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="cache folder")
    parser.add_argument("--vae_path", required=True, help="local Wan VAE or pipeline root")
    parser.add_argument("--text_encoder_path", required=True, help="local UMT5 or pipeline root")
    parser.add_argument("--text_max_length", type=int, default=512)
    parser.add_argument("--num_frames", type=int, required=True)
    parser.add_argument("--resolution", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--frame_stride", type=int, default=1)
    parser.add_argument("--target_fps", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="clip start frames (as --data.seed)")
    parser.add_argument("--shard_size", type=int, default=32, help="manifest rows per shard")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--num_workers", type=int, default=0, help="decoding processes")
    args = vars(parser.parse_args(argv))
    summary = preprocess(
        args.pop("manifest"), args.pop("out"), args.pop("vae_path"), args.pop("text_encoder_path"),
        **args,
    )
    rate = summary["encoded"] / summary["seconds"] if summary["encoded"] else 0.0
    print(
        f"encoded {summary['encoded']} clips in {summary['seconds']:.1f} s ({rate:.2f} clips/s); "
        f"the cache holds {summary['clips']} clips, {summary['skipped']} rows skipped (listed in "
        f"{INDEX}); shards: {summary['shards_written']} written, {summary['shards_reused']} reused"
    )


if __name__ == "__main__":
    main()
