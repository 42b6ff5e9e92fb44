"""The latent cache: VAE posteriors and caption embeddings of a manifest's clips, computed once.

Written by ``python -m vmoba.preprocess``; read by :class:`LatentCacheDataset` (the DataModule's
``--data.train_cache`` / ``--data.val_cache``). One folder per manifest::

    CACHE/shard_00000.safetensors   # the usable clips of manifest rows [0, shard_size)
    CACHE/shard_00001.safetensors   # ... rows [shard_size, 2 shard_size)
    CACHE/index.json                # written last: settings, shards (rows, captions), skipped rows

A shard holds, for its ``n`` usable rows (``n`` may be 0):

- ``posterior_mean``, ``posterior_std``: ``[n, z, T', H', W']`` the VAE's latent distribution of
  each clip, not normalised, in the VAE's dtype. Training draws a fresh latent from it every step,
  exactly as training on decoded videos does.
- ``text``: ``[n, L, D]`` caption embeddings, ``L`` the longest caption of the shard in tokens
  (positions past each caption's end are zero; readers zero-pad back to ``text_max_length``).
- ``rows``: int64 ``[n]`` manifest rows.

and as metadata the JSON of ``settings``, ``captions`` and ``skipped`` (``[{"row", "path"}]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from data.fsutil import atomic_output

FORMAT_VERSION = 1
INDEX = "index.json"
TENSORS = ("posterior_mean", "posterior_std", "text", "rows")
# Clip settings that fix the shapes of the cached tensors: a DataModule training from the cache
# must be configured with the same values.
CLIP_SETTINGS = ("num_frames", "frame_stride", "target_fps", "resolution")


class CachedSample(TypedDict):
    posterior_mean: torch.Tensor  # [z, T', H', W'] VAE posterior mean (not normalised)
    posterior_std: torch.Tensor  # [z, T', H', W'] its standard deviation
    text: torch.Tensor  # [text_max_length, D], zero past the caption's tokens
    caption: str
    index: int  # manifest row


class CachedBatch(TypedDict):
    posterior_mean: torch.Tensor  # [B, z, T', H', W']
    posterior_std: torch.Tensor  # [B, z, T', H', W']
    text: torch.Tensor  # [B, text_max_length, D]
    caption: list[str]
    index: torch.Tensor  # long [B], manifest rows


def shard_name(shard: int) -> str:
    """File name of shard number ``shard``."""
    return f"shard_{shard:05d}.safetensors"


def trim_text(text: torch.Tensor) -> torch.Tensor:
    """``text`` ``[n, L, D]`` without the trailing positions that are zero in every row."""
    used = (text != 0).any(dim=2).any(dim=0)  # [L]: positions non-zero in some row
    length = int(used.nonzero().max()) + 1 if used.any() else 0
    return text[:, :length]


def write_shard(
    path: Path,
    tensors: dict[str, torch.Tensor],
    *,
    captions: list[str],
    skipped: list[dict[str, Any]],
    settings: dict[str, Any],
) -> None:
    """Atomically write one shard: ``tensors`` (the keys of ``TENSORS``) and its metadata."""
    if set(tensors) != set(TENSORS):
        raise ValueError(f"tensors must have the keys {TENSORS}, got {sorted(tensors)}")
    metadata = {
        "settings": json.dumps(settings, sort_keys=True),
        "captions": json.dumps(captions),
        "skipped": json.dumps(skipped),
    }
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def read_shard_header(path: Path) -> dict[str, Any]:
    """A shard's metadata and shapes, without reading its tensors: ``settings``, ``captions``,
    ``skipped``, ``rows`` (list), ``latent_shape`` ``[z, T', H', W']`` and ``text_dim``."""
    with safe_open(path, framework="pt") as f:
        header = {k: json.loads(v) for k, v in f.metadata().items()}
        header["rows"] = f.get_tensor("rows").tolist()
        header["latent_shape"] = f.get_slice("posterior_mean").get_shape()[1:]
        header["text_dim"] = f.get_slice("text").get_shape()[2]
    return header


def read_index(folder: str | Path) -> dict[str, Any]:
    """The ``index.json`` of a complete cache; FileNotFoundError naming the folder otherwise."""
    path = Path(folder).expanduser() / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"no latent cache index {path}: run python -m vmoba.preprocess --out {folder} "
            "(an interrupted run resumes where it stopped)"
        )
    return json.loads(path.read_text())


class LatentCacheDataset(Dataset[CachedSample]):
    """The usable clips of a latent cache, in manifest order (item ``i`` is the ``i``-th usable
    row). Shards are opened per item (memory-mapped), so workers share nothing but file names.

    Args:
        folder: a cache written by ``python -m vmoba.preprocess``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        index = read_index(self.folder)
        if index["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"latent cache {self.folder} has format {index['format_version']}, this code reads "
                f"{FORMAT_VERSION}: preprocess again into a new folder"
            )
        self.settings: dict[str, Any] = index["settings"]
        self._skipped = [Path(s["path"]) for s in index["skipped"]]
        self._items = [
            (shard["file"], position, row, caption)
            for shard in index["shards"]
            for position, (row, caption) in enumerate(zip(shard["rows"], shard["captions"]))
        ]
        if not self._items:
            raise RuntimeError(
                f"latent cache {self.folder} holds no clip: every row of {index['manifest']} was "
                "skipped (see its index.json)"
            )

    @property
    def skipped(self) -> list[Path]:
        """Files of the manifest rows preprocessing skipped (missing, corrupt or too short)."""
        return self._skipped

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> CachedSample:
        file, position, row, caption = self._items[index]
        with safe_open(self.folder / file, framework="pt") as f:
            mean = f.get_slice("posterior_mean")[position]
            std = f.get_slice("posterior_std")[position]
            text = f.get_slice("text")[position]
        padding = self.settings["text_max_length"] - text.shape[0]
        return {
            "posterior_mean": mean,
            "posterior_std": std,
            "text": F.pad(text, (0, 0, 0, padding)),
            "caption": caption,
            "index": row,
        }


def collate_cached(samples: list[CachedSample]) -> CachedBatch:
    """Stack :class:`CachedSample` items into a :class:`CachedBatch`."""
    return {
        "posterior_mean": torch.stack([s["posterior_mean"] for s in samples]),
        "posterior_std": torch.stack([s["posterior_std"] for s in samples]),
        "text": torch.stack([s["text"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }
