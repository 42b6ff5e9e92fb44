"""The LightningModule: Wan-style flow matching of a VMoBA video DiT."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from data.video_io import write_mp4
from vmoba.model import VideoDiT, VMoBASettings, load_transformer
from vmoba.model.vae import LatentCodec
from vmoba.sampling import Scheduler, make_scheduler, record_samples, sample_videos
from vmoba.test_metrics import TestMetrics
from vmoba.text import TextEncoder


def shift_timesteps(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift ``t = s u / (1 + (s - 1) u)`` of uniform ``u`` in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def step_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator seeded from ``keys``, so each step's noise survives resuming from a checkpoint."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(seed)


def caption_slug(caption: str) -> str:
    """File-name-safe form of a caption: runs of other characters become ``_``, at most 60."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", caption).strip("_")[:60]


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[C, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, C]``."""
    return (
        ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).cpu().numpy()
    )


FROZEN_PREFIXES = ("text_encoder.", "codec.")  # modules rebuilt from hyperparameters, not trained

class VMoBAFlowMatching(L.LightningModule):
    """Trains a text-to-video Wan transformer with VMoBA self-attention by flow matching.

    ``x_t = (1 - t) x_0 + t * noise``, the model predicts ``noise - x_0`` at timestep ``1000 t``,
    with ``t`` drawn uniformly and shifted (``flow_shift``). The default is a tiny pixel-space
    model (no VAE) that trains on a CPU.

    Batches are either decoded videos (``video``, ``caption``: encoded here by the VAE and the
    text encoder) or read from a latent cache (``posterior_mean``, ``posterior_std``, ``text``,
    ``caption``; see ``data.latent_cache``): then the VAE's encoder and the text encoder are
    skipped, and the same seed gives the DiT the same inputs. The text encoder stays loaded for
    the empty caption (caption dropout, guidance) and to embed the prompts of sampled videos.

    Args:
        transformer: ``WanTransformer3DModel`` constructor arguments (None: a tiny 3-layer model
            over RGB pixels). Ignored when ``pretrained_path`` is set.
        pretrained_path: local diffusers directory of a Wan transformer (or its pipeline) to load.
        vae_path: local Wan VAE (``AutoencoderKLWan`` folder or a Wan pipeline root): the DiT then
            trains on its normalised latents and samples are decoded by it; None trains on pixels.
        attention: VMoBA settings (``attention.attention: full`` trains the dense baseline).
        text_encoder_path: local UMT5 encoder + tokenizer (a Wan pipeline folder); None uses a
            seeded random T5 encoder over ByT5 bytes, needing no downloads.
        text_max_length: tokens per caption.
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warmup, in optimizer steps.
        flow_shift: timestep shift for training and sampling (Wan: 3.0 at 480p, 5.0 at 720p).
        caption_dropout: probability of training on the empty caption (for guidance).
        gradient_checkpointing: recompute each transformer block in the backward pass.
        sample_steps: denoising steps of the videos sampled after each validation.
        sample_scheduler: their flow-matching solver: ``euler`` or ``unipc`` (Wan's default).
        guidance_scale: classifier-free guidance scale of those samples.
        dense_fraction: share of the first denoising steps with dense attention (paper: 0.25).
        num_samples: videos sampled after each validation (0 disables sampling).
        sample_fps: frame rate of the saved mp4 files.
        test_metrics: ``eval.metrics`` names scored on the videos ``test`` samples (None: all;
            those whose weights or inputs are missing are skipped with a warning saying why).
        metric_weights: ``{weights key: local file}`` for those metrics (``python -m eval.run
            --help`` lists the keys and files).
        test_reference_dir: folder of same-named reference videos (e.g. the ``test_samples`` of
            the full-attention run) for psnr, ssim and lpips.
        seed: seeds the tiny text encoder, the training noise of every step and the samples.
    """

    def __init__(
        self,
        transformer: Optional[dict[str, Any]] = None,
        pretrained_path: Optional[str] = None,
        vae_path: Optional[str] = None,
        attention: Optional[VMoBASettings] = None,
        text_encoder_path: Optional[str] = None,
        text_max_length: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 20,
        flow_shift: float = 3.0,
        caption_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
        sample_steps: int = 20,
        sample_scheduler: Scheduler = "euler",
        guidance_scale: float = 5.0,
        dense_fraction: float = 0.25,
        num_samples: int = 2,
        sample_fps: int = 8,
        test_metrics: Optional[list[str]] = None,
        metric_weights: Optional[dict[str, str]] = None,
        test_reference_dir: Optional[str] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Evaluation-only settings stay out of the checkpoint's hyperparameters: LightningCLI
        # applies those over the command line when --ckpt_path is given.
        self.save_hyperparameters(ignore=["test_metrics", "metric_weights", "test_reference_dir"])
        self.test_metric_names = test_metrics
        self.metric_weights = metric_weights
        self.test_reference_dir = test_reference_dir
        self.settings = attention or VMoBASettings()
        self.dit = VideoDiT(load_transformer(transformer, pretrained_path), self.settings)
        if gradient_checkpointing:
            self.dit.transformer.enable_gradient_checkpointing()
        self.codec = None if vae_path is None else LatentCodec.from_pretrained(vae_path)
        text_dim = self.dit.transformer.config.text_dim
        if text_encoder_path is None:
            self.text_encoder = TextEncoder.tiny(
                dim=text_dim, max_length=text_max_length, seed=seed
            )
        else:
            self.text_encoder = TextEncoder.from_pretrained(
                text_encoder_path, max_length=text_max_length
            )
        if self.text_encoder.out_dim != text_dim:
            raise ValueError(
                f"text encoder width {self.text_encoder.out_dim} != transformer text_dim {text_dim}"
            )
        self.val_losses: list[torch.Tensor] = []
        self.val_loss_start: Optional[float] = None
        self.val_loss_end: Optional[float] = None
        self.checkpoint_step = 0  # the step of the checkpoint loaded, if any
        self.step_seconds: list[float] = []
        self.step_tokens: list[int] = []
        self._loss_sum: Optional[torch.Tensor] = None  # over this fit's steps, on the device
        self._step_start = 0.0
        self._sample_captions: list[str] = []  # prompts of the samples: the first val captions
        self._sample_shape: tuple[int, ...] = ()  # (C, T, H, W) of the DiT's input

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(C, T, H, W)`` of the DiT's input for videos of ``video_shape`` ``(3, T, H, W)``."""
        return video_shape if self.codec is None else self.codec.latent_shape(video_shape)

    def batch_latent_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        """``(C, T, H, W)`` of the DiT's input for one clip of ``batch`` (raw or cached)."""
        if "posterior_mean" in batch:
            return tuple(batch["posterior_mean"].shape[1:])
        return self.latent_shape(tuple(batch["video"].shape[1:]))

    def clean_latents(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """``x_0`` ``[B, C, T, H, W]``: the videos, or their normalised VAE latents sampled with
        ``generator`` from the posterior (computed here, or read from the latent cache)."""
        if "posterior_mean" in batch:
            if self.codec is None:
                raise ValueError("cached batches need model.vae_path (the VAE that made the cache)")
            return self.codec.sample(batch["posterior_mean"], batch["posterior_std"], generator)
        if self.codec is None:
            return batch["video"]
        return self.codec.encode(batch["video"], generator)

    def text_embeddings(self, batch: dict[str, Any], drop: torch.Tensor) -> torch.Tensor:
        """``[B, L, text_dim]`` embeddings of the captions, the empty caption's where ``drop``."""
        if "text" not in batch:
            captions = ["" if d else c for c, d in zip(batch["caption"], drop.tolist())]
            return self.text_encoder(captions)
        text = batch["text"].float()
        if text.shape[1] != self.text_encoder.max_length:
            raise ValueError(
                f"the latent cache holds text of {text.shape[1]} tokens, but model.text_max_length "
                f"is {self.text_encoder.max_length}: preprocess with --text_max_length "
                f"{self.text_encoder.max_length} or set model.text_max_length {text.shape[1]}"
            )
        if not drop.any():  # spares embedding the empty caption
            return text
        return torch.where(drop.view(-1, 1, 1), self.text_encoder([""]), text)

    def flow_matching_loss(
        self, batch: dict[str, Any], generator: torch.Generator, *, dropout: float
    ) -> torch.Tensor:
        """MSE between predicted and true velocity for the clean clips of ``batch`` (pixels or VAE
        latents), captions replaced by the empty one with probability ``dropout``."""
        x0 = self.clean_latents(batch, generator)
        size = x0.shape[0]
        u = torch.rand(size, generator=generator, device=x0.device)
        t = shift_timesteps(u, self.hparams.flow_shift)
        drop = torch.rand(size, generator=generator, device=x0.device) < dropout
        text = self.text_embeddings(batch, drop)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t_ = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
        noisy = (1 - t_) * x0 + t_ * noise
        velocity = self.dit(noisy, t * 1000, text)
        return F.mse_loss(velocity.float(), (noise - x0).float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        micro = batch_idx % self.trainer.accumulate_grad_batches
        # Each data-parallel replica draws its own noise; the ranks of a sequence-parallel group
        # (consecutive ranks, see vmoba.parallel.strategy) must draw the same. Replica 0 keeps
        # the single-process stream.
        replica = self.trainer.global_rank // self.dit.sequence_size
        keys = (self.hparams.seed, self.global_step, micro) + ((replica,) if replica else ())
        generator = step_generator(self.device, *keys)
        loss = self.flow_matching_loss(batch, generator, dropout=self.hparams.caption_dropout)
        self.log("train/loss", loss, prog_bar=True)
        summed = loss.detach().float()  # no host sync: read once, in metrics.json
        self._loss_sum = summed if self._loss_sum is None else self._loss_sum + summed
        for kind, density in self.dit.densities().items():  # per rank: its samples and heads
            self.log(f"train/density_{kind}", density, sync_dist=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        seconds = time.perf_counter() - self._step_start
        self.step_seconds.append(seconds)
        grid = self.dit.latent_grid(self.batch_latent_shape(batch))
        tokens = math.prod(grid) * len(batch["caption"])
        self.step_tokens.append(tokens)
        self.log("train/tokens_per_s", tokens / seconds, prog_bar=True)

    def evaluation_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss with noise and timesteps fixed per batch index, comparable across evaluations."""
        generator = step_generator(self.device, self.hparams.seed, 1_000_000 + batch_idx)
        return self.flow_matching_loss(batch, generator, dropout=0.0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.evaluation_loss(batch, batch_idx)
        self.val_losses.append(loss.detach())
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["caption"]), sync_dist=True)
        if batch_idx == 0:
            self._sample_captions = batch["caption"][: self.hparams.num_samples]
            self._sample_shape = self.batch_latent_shape(batch)
        return loss

    def on_test_epoch_start(self) -> None:
        self._test_metrics = TestMetrics(
            self.test_metric_names, self.metric_weights, self.test_reference_dir
        )

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Validation's loss (same seeded noise) as ``test/loss``; then one video sampled per
        caption into ``<run dir>/test_samples/`` and scored by ``test_metrics``."""
        loss = self.evaluation_loss(batch, batch_idx)
        self.log("test/loss", loss, batch_size=len(batch["caption"]), sync_dist=True)
        if self._test_metrics.ready:
            paths = self._sample_batch(batch, batch_idx, "test_samples")
            if self.dit.sequence_rank == 0:  # the rank that wrote them
                self._test_metrics.score(paths, batch["caption"])
        return loss

    def on_test_epoch_end(self) -> None:
        for name, mean in self._test_metrics.means().items():
            self.log(f"test/{name}", mean)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[Path]:
        """Sample one video per caption of ``batch``, saved under ``<run dir>/predictions/``."""
        return self._sample_batch(batch, batch_idx, "predictions")

    def _sample_batch(self, batch: dict[str, Any], batch_idx: int, folder: str) -> list[Path]:
        shape = self.batch_latent_shape(batch)
        return self.save_samples(self.run_dir / folder, f"batch{batch_idx:04d}", batch["caption"], shape)

    def on_validation_epoch_end(self) -> None:
        mean = self.trainer.strategy.reduce(torch.stack(self.val_losses).mean(), reduce_op="mean")
        mean = mean.item()  # over all ranks
        self.val_losses.clear()
        if self.trainer.sanity_checking:
            self.val_loss_start = mean  # before any training step: the baseline for metrics.json
            return
        self.val_loss_end = mean
        run_dir = self.run_dir  # a collective under DDP: every rank asks
        # Rank 0 samples; with sequence parallelism, the rest of its group takes part.
        if self.hparams.num_samples > 0 and self.trainer.global_rank < self.dit.sequence_size:
            self.save_samples(
                run_dir / "samples",
                f"step{self.trained_steps:06d}",
                self._sample_captions,
                self._sample_shape,
            )

    def save_samples(
        self, folder: Path, prefix: str, captions: list[str], shape: tuple[int, ...]
    ) -> list[Path]:
        """Sample one video per caption, of latent ``shape`` ``(C, T, H, W)`` (the DiT's input),
        and write them as mp4 files named ``<prefix>_<i>_<caption>.mp4`` (the same names in every
        run with the same seed), listed with their prompts and the sampling settings in the
        folder's ``settings.json`` (:func:`~vmoba.sampling.record_samples`; under data
        parallelism, rank 0's videos). With sequence parallelism the whole group samples and its
        first rank writes."""
        text = self.text_encoder(captions)
        latents = sample_videos(
            self.dit,
            text,
            self.text_encoder([""]),
            shape,
            steps=self.hparams.sample_steps,
            guidance_scale=self.hparams.guidance_scale,
            flow_shift=self.hparams.flow_shift,
            dense_fraction=self.hparams.dense_fraction,
            scheduler=self.hparams.sample_scheduler,
            generator=step_generator(self.device, self.hparams.seed, 2_000_000),
        )
        videos = self.to_pixels(latents)
        paths = [folder / f"{prefix}_{i}_{caption_slug(c)}.mp4" for i, c in enumerate(captions)]
        if self.dit.sequence_rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            for path, video in zip(paths, videos):
                write_mp4(path, to_uint8_frames(video), fps=self.hparams.sample_fps)
            if self.trainer.global_rank == 0:
                listed = [
                    dict(file=p.name, prompt=c, step=self.trained_steps)
                    for p, c in zip(paths, captions)
                ]
                record_samples(folder, self.sampling_settings(), listed)
        return paths

    def sampling_settings(self) -> dict[str, Any]:
        """How :meth:`save_samples` samples: the checkpoint loaded (None in a fresh fit), the
        scheduler, steps, guidance, flow shift, dense fraction, noise seed and attention."""
        hp = self.hparams
        ckpt_path = self.trainer.ckpt_path
        return dict(
            checkpoint=None if ckpt_path is None else str(ckpt_path),
            steps=hp.sample_steps,
            scheduler=type(make_scheduler(hp.sample_scheduler, hp.flow_shift)).__name__,
            guidance_scale=hp.guidance_scale, flow_shift=hp.flow_shift,
            dense_fraction=hp.dense_fraction, seed=hp.seed, attention=self.settings.attention,
        )

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos ``[B, 3, T, H, W]`` in [-1, 1] of the DiT's ``latents`` (decoded by the VAE)."""
        return latents if self.codec is None else self.codec.decode(latents)

    @property
    def run_dir(self) -> Path:
        """The run directory: the trainer's log dir (config, logs, checkpoints, samples). Under DDP
        every rank must ask (the trainer broadcasts rank 0's)."""
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def on_fit_end(self) -> None:
        run_dir = self.run_dir  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero:
            return
        path = run_dir / "metrics.json"
        earlier = json.loads(path.read_text()) if path.is_file() else None  # a resumed run's
        steps = len(self.step_seconds)
        if steps == 0 and earlier is not None:
            return  # nothing trained (a finished run resumed): its summary stays
        totals = dict(
            train_steps=steps,
            train_loss_sum=self._loss_sum.item() if steps else 0.0,
            train_tokens=sum(self.step_tokens),
            train_seconds=sum(self.step_seconds),
        )
        val_loss_start = self.val_loss_start
        if earlier is not None:
            totals = {k: v + earlier.get(k, 0) for k, v in totals.items()}
            val_loss_start = earlier.get("val_loss_start")
        metrics = {k: v.item() for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        steady = self.step_seconds[steps // 10 :] or self.step_seconds
        run_steps = totals["train_steps"]
        summary = dict(
            global_step=self.global_step,
            train_loss=totals["train_loss_sum"] / run_steps if run_steps else None,
            train_loss_last=metrics.get("train/loss"),
            val_loss_start=val_loss_start,
            val_loss_end=self.val_loss_end,
            density={
                k: metrics[f"train/density_{k}"]
                for k in ("1d", "2d", "3d")
                if f"train/density_{k}" in metrics
            },
            attention=self.settings.attention,
            median_step_s=float(np.median(steady)) if steady else None,
            tokens_per_s=totals["train_tokens"] / totals["train_seconds"] if run_steps else None,
            skipped_videos=self._skipped_videos(),
            **totals,
            definitions=dict(
                train_steps="optimizer steps run, resumed fits included (a step run again "
                "after resuming from an earlier checkpoint counts again)",
                train_loss="mean training loss over those steps (rank 0's batches)",
                train_loss_last="the last step's training loss",
                val_loss_start="validation loss before the run's first step",
                median_step_s="median seconds a step of the last fit, its first 10% left out",
                tokens_per_s="video tokens over the seconds of the run's steps (rank 0)",
                density="kept density per layer kind at the last step",
            ),
        )
        path.write_text(json.dumps(summary, indent=1) + "\n")

    def _skipped_videos(self) -> dict[str, int]:
        """Unreadable or too-short videos each split skipped (main process only)."""
        datamodule = self.trainer.datamodule
        splits = {
            "train": getattr(datamodule, "train_dataset", None),
            "val": getattr(datamodule, "val_dataset", None),
        }
        counts = {name: len(ds.skipped) for name, ds in splits.items() if ds is not None}
        if any(counts.values()):
            rank_zero_warn(
                f"skipped unreadable or too-short videos: {counts} (see the warnings above)"
            )
        return counts

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the frozen text encoder and VAE out of checkpoints: the model rebuilds them from
        its hyperparameters (their local paths, or the seed), and UMT5-XXL alone is ~22 GB."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put this model's frozen weights back before the strict state-dict load, and note the
        checkpoint's step (``validate`` names its samples by it: its own counter stays 0)."""
        frozen = {k: v for k, v in self.state_dict().items() if k.startswith(FROZEN_PREFIXES)}
        checkpoint["state_dict"].update(frozen)
        self.checkpoint_step = checkpoint.get("global_step", 0)

    @property
    def trained_steps(self) -> int:
        """Optimizer steps behind the current weights: the trainer's while fitting, else those
        of the checkpoint they came from (0 for fresh weights)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        return self.global_step if fitting else self.checkpoint_step

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.dit.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            betas=self.hparams.betas,
        )
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
