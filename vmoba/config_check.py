"""Checks of a run's configuration that need no model and no data loading, so that a command
that cannot run fails at once, in one line naming the option, before it builds or writes
anything: VMoBA's selection rule, each layer kind's block against the token grid the data and
the model give, and the local paths."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

from data.datamodule import check_scenes, renders_scenes
from data.manifest import read_manifest
from data.video_dataset import BadVideoWarning, VideoClipDataset
from vmoba.attention import LAYER_KINDS
from vmoba.attention.partition import block_shape
from vmoba.model.processor import VMoBASettings
from vmoba.model.vae import latent_size
from vmoba.model.wan import TINY_WAN, patch_grid

WAN_VAE_SCALE = (4, 8)  # AutoencoderKLWan's temporal and spatial factors when its config omits them


class ConfigError(ValueError):
    """A configuration that cannot run; the message begins with the option (``--model.x``)."""


def _fields(node: Any) -> dict[str, Any]:
    return dict(vars(node)) if hasattr(node, "__dict__") else dict(node or {})


def _json(folder: Path, sub: str) -> dict[str, Any]:
    """``config.json`` of a diffusers folder (or of its ``sub`` folder in a pipeline root)."""
    folder = folder / sub if (folder / sub).is_dir() else folder
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_paths(model: Any, data: Any) -> None:
    """Every local path the run reads exists, and a manifest lists at least one existing clip."""
    for option in ("pretrained_path", "vae_path", "text_encoder_path"):
        value = _fields(model).get(option)
        if value is not None and not Path(value).expanduser().exists():
            raise ConfigError(f"--model.{option} {value}: no such folder")
    for option in ("train_manifest", "val_manifest", "train_cache", "val_cache"):
        value = _fields(data).get(option)
        if value is None:
            continue
        if not Path(value).expanduser().exists():
            raise ConfigError(f"--data.{option} {value}: no such file or folder")
        if option.endswith("manifest"):
            try:
                entries = read_manifest(value)
            except ValueError as error:
                raise ConfigError(f"--data.{option}: {error}") from None
            if not any(entry.path.is_file() for entry in entries):
                raise ConfigError(
                    f"--data.{option} {value}: none of its {len(entries)} clips exists "
                    f"(first: {entries[0].path})"
                )
            try:
                unusable = first_unusable(value, data)
            except ValueError as error:  # clip settings out of range
                raise ConfigError(f"--data: {error}") from None
            if unusable is not None:
                raise ConfigError(
                    f"--data.{option} {value}: none of its {len(entries)} clips is usable "
                    f"({unusable})"
                )


def first_unusable(manifest: str, data: Any) -> Optional[str]:
    """None when a row of ``manifest`` decodes into a clip of the run's clip settings (rows are
    tried in order until one does), else why its first row cannot."""
    fields = _fields(data)
    settings = {k: fields[k] for k in ("num_frames", "frame_stride", "seed") if k in fields}
    dataset = VideoClipDataset(
        manifest, resolution=tuple(fields.get("resolution", (32, 32))),
        target_fps=fields.get("target_fps"), **{"num_frames": 8, **settings},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadVideoWarning)
        if any(dataset.clip(row) is not None for row in range(len(dataset))):
            return None
    return str(caught[0].message) if caught else "no clip"


def attention_settings(model: Any) -> Optional[VMoBASettings]:
    """The run's VMoBA settings, each layer kind's selection rule checked (None: defaults)."""
    attention = _fields(model).get("attention")
    if attention is None:
        return None
    try:
        settings = VMoBASettings(**_fields(attention))
        for kind in LAYER_KINDS:
            settings.layer_config(kind)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--model.attention: {error}") from None
    return settings


def token_grid(model: Any, data: Any) -> Optional[tuple[int, int, int]]:
    """The DiT's token grid ``(T, Hg, Wg)`` for the data's clips (None for a latent cache, whose
    clips carry their own latent shape)."""
    model, data = _fields(model), _fields(data)
    if data.get("train_cache") is not None:
        return None
    frames = data.get("num_frames", 8)
    height, width = data.get("resolution", (32, 32))
    if model.get("vae_path") is not None:
        vae = _json(Path(model["vae_path"]).expanduser(), "vae")
        temporal = vae.get("scale_factor_temporal", WAN_VAE_SCALE[0])
        spatial = vae.get("scale_factor_spatial", WAN_VAE_SCALE[1])
        frames, height, width = latent_size(frames, height, width, temporal, spatial)
    transformer = model.get("transformer")
    if transformer is None and model.get("pretrained_path") is not None:
        transformer = _json(Path(model["pretrained_path"]).expanduser(), "transformer")
    patch = (transformer or TINY_WAN).get("patch_size", TINY_WAN["patch_size"])
    return patch_grid((frames, height, width), patch)


def check_blocks(model: Any, data: Any) -> None:
    """The selection rule, and every layer kind's block against the token grid."""
    settings = attention_settings(model)
    grid = token_grid(model, data)
    if settings is None or settings.mode != "vmoba" or grid is None:
        return
    for kind in LAYER_KINDS:
        try:
            block_shape(grid, settings.block(kind))
        except ValueError as error:
            raise ConfigError(f"--model.attention.block_{kind}: {error}") from None


def check_synthetic(data: Any) -> None:
    """The clip settings of procedural scenes, when the run renders them."""
    data = _fields(data)
    files = data.get("train_manifest"), data.get("train_cache")
    if not renders_scenes(data.get("synthetic"), *files):
        return
    try:
        check_scenes(data.get("num_frames", 8), data.get("frame_stride", 1),
                     data.get("target_fps"), tuple(data.get("resolution", (32, 32))))
    except ValueError as error:
        raise ConfigError(f"--data.synthetic scenes: {error}") from None


def check_run_config(model: Any, data: Any) -> None:
    """:func:`check_paths`, :func:`check_synthetic` and :func:`check_blocks` for a run's
    ``model`` and ``data`` configuration (namespaces or dicts); raises :class:`ConfigError`."""
    check_paths(model, data)
    check_synthetic(data)
    check_blocks(model, data)
