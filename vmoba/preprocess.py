"""Encode a manifest's clips once into a latent cache with Wan's VAE and UMT5 text encoder.

    python -m vmoba.preprocess --manifest train.csv --out cache/train \\
        --vae_path WAN_DIR --text_encoder_path WAN_DIR --text_max_length 512 \\
        --num_frames 93 --resolution 576 1024 [--frame_stride 1 | --target_fps 16] [--seed 0] \\
        [--shard_size 32 --device cuda --dtype bfloat16 --num_workers 4]

The clip flags mean what ``--data.*`` of ``python main.py fit`` mean, and must match them when
training from the cache (``--data.train_cache cache/train``); ``--text_max_length`` must match
``--model.text_max_length``. The cache format, resumption and skipping of bad files are
``data.preprocess``'s; this module supplies the encoders.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from data import preprocess as cache
from data.latent_cache import INDEX
from vmoba.model.vae import LatentCodec
from vmoba.text import TextEncoder


def preprocess(
    manifest: str | Path,
    out: str | Path,
    vae_path: str | Path,
    text_encoder_path: str | Path,
    *,
    text_max_length: int = 512,
    device: str = "cpu",
    **settings: Any,
) -> dict[str, Any]:
    """:func:`data.preprocess.preprocess` with the Wan VAE and UMT5 encoder of local paths.

    Args:
        manifest, out: as ``data.preprocess.preprocess``.
        vae_path: local Wan VAE (``AutoencoderKLWan`` folder or Wan pipeline root).
        text_encoder_path: local UMT5 encoder + tokenizer (Wan pipeline root or one folder).
        text_max_length: tokens per caption (as ``--model.text_max_length``).
        device: where both encoders run.
        settings: the clip and cache settings of ``data.preprocess.preprocess`` (``num_frames``,
            ``resolution``, ``shard_size``, ``dtype``, ...).

    Returns:
        ``data.preprocess.preprocess``'s summary.
    """

    def load_encoders(dtype: torch.dtype) -> tuple[LatentCodec, TextEncoder]:
        codec = LatentCodec.from_pretrained(vae_path, dtype=dtype).to(device)
        text = TextEncoder.from_pretrained(
            text_encoder_path, max_length=text_max_length, dtype=dtype
        )
        return codec, text.to(device)

    sources = {"vae_path": str(vae_path), "text_encoder_path": str(text_encoder_path)}
    return cache.preprocess(
        manifest, out, load_encoders, sources=sources, text_max_length=text_max_length,
        device=device, **settings,
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
    parser.add_argument("--dtype", choices=sorted(cache.DTYPES), default="float32")
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
