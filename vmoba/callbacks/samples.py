"""Sampled videos on disk: one mp4 per caption and the folder's ``settings.json``, written by
:func:`write_videos` for the test and predict steps and after each validation
(:class:`ValidationSamples`). ``model`` and ``pl_module`` are a
:class:`~vmoba.flow_matching.VMoBAFlowMatching`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from data.video_io import record_samples, write_mp4
from vmoba.sampling import caption_slug, make_scheduler, to_uint8_frames


def sampling_settings(model: L.LightningModule) -> dict[str, Any]:
    """How ``model`` samples: the checkpoint loaded (None in a fresh fit), the scheduler, steps,
    guidance, flow shift, dense fraction, noise seed and attention."""
    hp = model.hparams
    ckpt_path = model.trainer.ckpt_path
    return dict(
        checkpoint=None if ckpt_path is None else str(ckpt_path),
        steps=hp.sample_steps,
        scheduler=type(make_scheduler(hp.sample_scheduler, hp.flow_shift)).__name__,
        guidance_scale=hp.guidance_scale, flow_shift=hp.flow_shift,
        dense_fraction=hp.dense_fraction, seed=hp.seed, attention=model.settings.mode,
    )


def write_videos(
    model: L.LightningModule,
    folder: Path,
    prefix: str,
    captions: list[str],
    shape: tuple[int, ...],
) -> list[Path]:
    """Sample one video per caption (:meth:`~vmoba.flow_matching.VMoBAFlowMatching.generate`,
    latent ``shape`` ``(C, T, H, W)``) and write them as mp4 files named
    ``<prefix>_<i>_<caption>.mp4`` (the same names in every run with the same seed), listed with
    their prompts and :func:`sampling_settings` in the folder's ``settings.json``
    (:func:`~data.video_io.record_samples`; under data parallelism, rank 0's videos). With
    sequence parallelism the whole group samples and its first rank writes. Returns the paths."""
    videos = model.generate(captions, shape)
    paths = [folder / f"{prefix}_{i}_{caption_slug(c)}.mp4" for i, c in enumerate(captions)]
    if model.dit.sequence_rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for path, video in zip(paths, videos):
            write_mp4(path, to_uint8_frames(video), fps=model.hparams.sample_fps)
        if model.trainer.global_rank == 0:
            listed = [
                dict(file=p.name, prompt=c, step=model.trained_steps)
                for p, c in zip(paths, captions)
            ]
            record_samples(folder, sampling_settings(model), listed)
    return paths


class ValidationSamples(Callback):
    """After each validation (not the sanity check), samples ``model.num_samples`` videos (0: none)
    for the first captions of the first validation batch into ``<run dir>/samples/``, named by
    the step of the weights (``step000100_0_<caption>.mp4``), with the model's sampling
    hyperparameters, at the run's precision (bf16 autocast under ``bf16-mixed``). Rank 0
    samples; with sequence parallelism the rest of its group takes part.
    """

    def __init__(self) -> None:
        self._captions: list[str] = []
        self._shape: tuple[int, ...] = ()  # (C, T, H, W) of the DiT's input

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0:
            self._captions = batch["caption"][: pl_module.hparams.num_samples]
            self._shape = pl_module.batch_latent_shape(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        run_dir = pl_module.run_dir  # a collective under DDP: every rank asks
        if pl_module.hparams.num_samples > 0 and trainer.global_rank < pl_module.dit.sequence_size:
            prefix = f"step{pl_module.trained_steps:06d}"
            # at the run's precision, as its validation steps (Lightning autocasts only those)
            with trainer.precision_plugin.forward_context():
                write_videos(pl_module, run_dir / "samples", prefix, self._captions, self._shape)
