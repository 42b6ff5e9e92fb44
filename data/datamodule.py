"""LightningDataModule serving video clips from manifests, the synthetic set, or a latent cache."""

import math
from pathlib import Path
from typing import Literal, TypedDict

import lightning as L
import torch
from torch.utils.data import DataLoader

from data.latent_cache import CLIP_SETTINGS, LatentCacheDataset, collate_cached
from data.sampler import EpochShuffleSampler
from data.scenes import ProceduralScenes, check_scene_shape
from data.synthetic import ensure_synthetic_dataset
from data.video_dataset import VideoClipDataset, VideoSample, validate_clip_args

SYNTHETIC_MIN_FRAMES = 24
SYNTHETIC_VAL_FRACTION = 0.125
ClipDataset = VideoClipDataset | LatentCacheDataset | ProceduralScenes


class VideoBatch(TypedDict):
    video: torch.Tensor  # float32 [B, C=3, T, H, W] in [-1, 1]
    caption: list[str]
    index: torch.Tensor  # long [B], manifest rows


def collate_videos(samples: list[VideoSample]) -> VideoBatch:
    """Stack :class:`VideoSample` items into a :class:`VideoBatch`."""
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }


def renders_scenes(synthetic: str, train_manifest: object, train_cache: object) -> bool:
    """Whether a data configuration renders procedural scenes: ``synthetic="scenes"`` with
    neither manifests nor latent caches."""
    return synthetic == "scenes" and train_manifest is None and train_cache is None


def check_scenes(
    num_frames: int, frame_stride: int, target_fps: float | None, resolution: tuple[int, int]
) -> None:
    """ValueError unless the procedural scenes can be rendered with these clip settings."""
    if frame_stride != 1 or target_fps is not None:
        raise ValueError(
            "synthetic='scenes' renders num_frames consecutive frames: leave frame_stride "
            f"(got {frame_stride}) and target_fps (got {target_fps}) at their defaults"
        )
    check_scene_shape(num_frames, tuple(resolution))


class VideoDataModule(L.LightningDataModule):
    """Train/val loaders of fixed-length video clips.

    With both manifests left as None, the clips are synthetic: ``synthetic="shapes"`` generates a
    "moving shapes" set (once) under ``synthetic_root`` in :meth:`prepare_data`;
    ``synthetic="scenes"`` renders :class:`~data.scenes.ProceduralScenes` (textured objects,
    occlusion, camera pan and zoom) on the fly at exactly ``num_frames`` and ``resolution``.
    With both caches set, batches are read from latent caches (``python -m vmoba.preprocess``):
    VAE posteriors and caption embeddings instead of decoded videos (a
    :class:`~data.latent_cache.CachedBatch`).

    Args:
        train_manifest: CSV or JSONL manifest of training clips (fields ``path``, ``caption``).
            Give both manifests or neither.
        val_manifest: manifest of validation clips, same format.
        train_cache: latent cache of the training clips, written by ``python -m vmoba.preprocess``
            with the same num_frames, frame_stride, target_fps and resolution as here. Give both
            caches or neither, and then no manifests. The clips' start frames are the cache's
            (its preprocessing seed); ``seed`` still orders the batches.
        val_cache: latent cache of the validation clips.
        synthetic_root: cache folder of the synthetic set, used when the manifests are None. Its
            clips have max(24, (num_frames - 1) * frame_stride + 1) frames of 64x64 pixels;
            asking for longer clips regenerates the cache.
        synthetic: which synthetic clips: ``"shapes"`` or ``"scenes"`` (then ``frame_stride``
            and ``target_fps`` keep their defaults, and ``synthetic_root`` is unused).
        synthetic_num_clips: number of synthetic clips (train + val, 1/8 of them val), >= 8. The
            content does not depend on ``seed``, so changing the seed never regenerates the cache.
        num_frames: frames per clip T, >= 1.
        frame_stride: step between sampled source frames, >= 1.
        target_fps: sample clips at this frame rate instead of ``frame_stride`` (the stride of
            each video becomes round(its fps / target_fps)); None uses ``frame_stride``.
        resolution: output (height, width) of every frame.
        batch_size: clips per batch B, >= 1.
        num_workers: DataLoader worker processes, >= 0 (0 decodes in the main process).
        seed: non-negative seed for clip start frames and the training order; the order of
            epoch ``e`` depends only on (seed, e). Under DDP Lightning replaces the sampler with
            a DistributedSampler seeded by ``seed_everything`` instead.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        train_cache: str | None = None,
        val_cache: str | None = None,
        synthetic_root: str = "~/.cache/vmoba/synthetic",
        synthetic: Literal["shapes", "scenes"] = "shapes",
        synthetic_num_clips: int = 256,
        num_frames: int = 8,
        frame_stride: int = 1,
        target_fps: float | None = None,
        resolution: tuple[int, int] = (32, 32),
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (train_manifest is None) != (val_manifest is None):
            raise ValueError(
                "train_manifest and val_manifest must both be set or both be None (synthetic "
                f"data), got train_manifest={train_manifest!r} val_manifest={val_manifest!r}"
            )
        if (train_cache is None) != (val_cache is None):
            raise ValueError(
                "train_cache and val_cache must both be set or both be None, got "
                f"train_cache={train_cache!r} val_cache={val_cache!r}"
            )
        if train_cache is not None and train_manifest is not None:
            raise ValueError(
                "give manifests or latent caches, not both: got train_manifest="
                f"{train_manifest!r} and train_cache={train_cache!r}"
            )
        validate_clip_args(num_frames, frame_stride, resolution)
        if renders_scenes(synthetic, train_manifest, train_cache):
            check_scenes(num_frames, frame_stride, target_fps, resolution)
        if synthetic_num_clips < 8:
            raise ValueError(f"synthetic_num_clips must be >= 8, got {synthetic_num_clips}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.save_hyperparameters()
        self.train_manifest = train_manifest
        self.val_manifest = val_manifest
        self.train_cache = train_cache
        self.val_cache = val_cache
        self.synthetic_root = synthetic_root
        self.synthetic = synthetic
        self.synthetic_num_clips = synthetic_num_clips
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.target_fps = target_fps
        self.resolution = tuple(resolution)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: ClipDataset | None = None
        self.val_dataset: ClipDataset | None = None

    def prepare_data(self) -> None:
        """Generate the synthetic set if it is used (Lightning runs this on one process per node)."""
        if self.train_cache is None and not self._scenes:
            self._manifests()

    def setup(self, stage: str | None = None) -> None:
        """Build both datasets; cheap, as videos (or cache shards) are only opened when accessed."""
        if self.train_cache is not None:
            self.train_dataset = self._cached(self.train_cache)
            self.val_dataset = self._cached(self.val_cache)
            return
        if self._scenes:
            num_val = round(self.synthetic_num_clips * SYNTHETIC_VAL_FRACTION)
            num_train = self.synthetic_num_clips - num_val
            self.train_dataset = self._rendered(num_train, "train")
            self.val_dataset = self._rendered(num_val, "val")
            return
        train, val = self._manifests()
        self.train_dataset = self._dataset(train)
        self.val_dataset = self._dataset(val)

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_dataset)
        sampler = EpochShuffleSampler(dataset, seed=self.seed)
        sampler.skip_next(self._batches_done_in_epoch(len(dataset)) * self.batch_size)
        return self._loader(dataset, sampler)

    def _batches_done_in_epoch(self, num_samples: int) -> int:
        """Batches of the current epoch a restored single-device run already trained on.

        Derived from the restored step and epoch: Lightning's own batch counter lags by one when
        the checkpoint was written in ``on_train_batch_end``. Under DDP Lightning replaces the
        sampler, and a mid-epoch resume restarts that epoch's order.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size > 1:
            return 0
        per_epoch = math.ceil(num_samples / self.batch_size)
        return max(0, trainer.global_step * trainer.accumulate_grad_batches - trainer.current_epoch * per_epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset), sampler=None)

    def test_dataloader(self) -> DataLoader:
        """The validation split (the synthetic set has no separate test split)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Validation clips: their captions prompt the samples, their shape sizes them."""
        return self.val_dataloader()

    @property
    def _scenes(self) -> bool:
        """Whether the clips are procedural scenes (:func:`renders_scenes`)."""
        return renders_scenes(self.synthetic, self.train_manifest, self.train_cache)

    def _rendered(self, num_clips: int, split: str) -> ProceduralScenes:
        return ProceduralScenes(num_clips, self.num_frames, self.resolution, split)

    def _manifests(self) -> tuple[str | Path, str | Path]:
        if self.train_manifest is not None:
            return self.train_manifest, self.val_manifest
        # Returns at once once generated, so setup() on every rank may call it after prepare_data.
        span = (self.num_frames - 1) * self.frame_stride + 1
        manifests = ensure_synthetic_dataset(
            self.synthetic_root,
            num_clips=self.synthetic_num_clips,
            num_frames=max(SYNTHETIC_MIN_FRAMES, span),
            val_fraction=SYNTHETIC_VAL_FRACTION,
        )
        return manifests.train, manifests.val

    def _dataset(self, manifest: str | Path) -> VideoClipDataset:
        return VideoClipDataset(
            manifest,
            num_frames=self.num_frames,
            frame_stride=self.frame_stride,
            resolution=self.resolution,
            seed=self.seed,
            target_fps=self.target_fps,
        )

    def _cached(self, folder: str) -> LatentCacheDataset:
        dataset = LatentCacheDataset(folder)
        ours = {name: getattr(self, name) for name in CLIP_SETTINGS}
        ours["resolution"] = list(self.resolution)
        differ = {k: (dataset.settings[k], v) for k, v in ours.items() if dataset.settings[k] != v}
        if differ:
            raise ValueError(
                f"latent cache {folder} was preprocessed with other clip settings; "
                + ", ".join(f"{k}: cache {c!r}, data.{k} {v!r}" for k, (c, v) in differ.items())
            )
        return dataset

    def _loader(self, dataset: ClipDataset, sampler: EpochShuffleSampler | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=(
                collate_cached if isinstance(dataset, LatentCacheDataset) else collate_videos
            ),
            # Workers then keep their record of bad files across epochs, so each warns once.
            persistent_workers=self.num_workers > 0,
        )

    @staticmethod
    def _require(dataset: ClipDataset | None) -> ClipDataset:
        if dataset is None:
            raise RuntimeError("call setup() before requesting dataloaders")
        return dataset
