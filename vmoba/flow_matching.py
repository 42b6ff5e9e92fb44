"""The LightningModule: Wan-style flow matching of a VMoBA video DiT."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from vmoba.callbacks.samples import write_videos
from vmoba.model import VideoDiT, VMoBASettings, load_transformer
from vmoba.model.vae import LatentCodec
from vmoba.sampling import Scheduler, sample_videos
from vmoba.text import TextEncoder


def shift_timesteps(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift ``t = s u / (1 + (s - 1) u)`` of uniform ``u`` in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def step_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator seeded from ``keys``, so each step's noise survives resuming from a checkpoint."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(seed)


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
        attention: VMoBA settings (``attention.mode: full`` trains the dense baseline).
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
        sample_fps: frame rate of the saved mp4 files (validation, test and predict samples).
        seed: seeds the tiny text encoder, the training noise of every step and the samples.
        val_timesteps: None scores each validation batch at timesteps and noise drawn from
            ``(seed, batch index)``; ``K`` scores every clip at the ``K`` shifted midpoints
            ``t_k = shift((k + 1/2) / K)`` with noise drawn from ``(seed, clip index, k)``, so a
            clip's loss does not depend on the batch it is in (curves comparable across runs).
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
        seed: int = 0,
        val_timesteps: Optional[int] = None,
    ) -> None:
        super().__init__()
        if val_timesteps is not None and val_timesteps < 1:
            raise ValueError(f"val_timesteps must be None or >= 1, got {val_timesteps}")
        self.save_hyperparameters()
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
        self.checkpoint_step = 0  # the step of the checkpoint loaded, if any

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
        return self.velocity_loss(x0, t, noise, text)

    def velocity_loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        """MSE between the predicted and the true velocity ``noise - x0`` at ``x_t = (1 - t) x0 +
        t noise``: ``x0``, ``noise`` ``[B, C, T, H, W]``, ``t`` ``[B]`` in [0, 1], ``text``
        ``[B, L, text_dim]``."""
        t_ = t.view(-1, 1, 1, 1, 1).to(x0.dtype)
        noisy = (1 - t_) * x0 + t_ * noise
        velocity = self.dit(noisy, t * 1000, text)
        return F.mse_loss(velocity.float(), (noise - x0).float())

    def timestep_grid_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Mean loss over the clips of ``batch`` and the ``val_timesteps`` grid, each clip's noise
        seeded by its index (``batch["index"]``) and the grid point (a VAE's posterior sample of
        the clip is still drawn per batch)."""
        steps = self.hparams.val_timesteps
        x0 = self.clean_latents(batch, step_generator(self.device, self.hparams.seed, batch_idx))
        size = x0.shape[0]
        text = self.text_embeddings(batch, torch.zeros(size, dtype=torch.bool, device=x0.device))
        losses = []
        for k in range(steps):
            t = shift_timesteps(torch.full((size,), (k + 0.5) / steps), self.hparams.flow_shift)
            noise = torch.stack([
                torch.randn(
                    x0.shape[1:], dtype=x0.dtype, device=x0.device,
                    generator=step_generator(self.device, self.hparams.seed, 3_000_000, i, k),
                )
                for i in batch["index"].tolist()
            ])
            losses.append(self.velocity_loss(x0, t.to(x0.device), noise, text))
        return torch.stack(losses).mean()

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
        for kind, density in self.dit.densities().items():  # per rank: its samples and heads
            self.log(f"train/density_{kind}", density, sync_dist=True)
        return loss

    def evaluation_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss with noise and timesteps fixed (per batch index, or per clip and grid point with
        ``val_timesteps``), comparable across evaluations."""
        if self.hparams.val_timesteps is not None:
            return self.timestep_grid_loss(batch, batch_idx)
        generator = step_generator(self.device, self.hparams.seed, 1_000_000 + batch_idx)
        return self.flow_matching_loss(batch, generator, dropout=0.0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.evaluation_loss(batch, batch_idx)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["caption"]), sync_dist=True)
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Validation's loss (same seeded noise) as ``test/loss``; then one video sampled per
        caption into ``<run dir>/test_samples/``.

        Returns:
            ``loss``, and ``videos``: ``{mp4 path: caption}`` of the videos this process wrote
            (none on the other ranks of a sequence-parallel group), for a callback that scores
            them (``python main.py test`` adds ``eval.callbacks.TestVideoMetrics``).
        """
        loss = self.evaluation_loss(batch, batch_idx)
        self.log("test/loss", loss, batch_size=len(batch["caption"]), sync_dist=True)
        paths = self._write_batch(batch, batch_idx, "test_samples")
        written = self.dit.sequence_rank == 0
        return dict(loss=loss, videos=dict(zip(paths, batch["caption"])) if written else {})

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[Path]:
        """Sample one video per caption of ``batch``, saved under ``<run dir>/predictions/``."""
        return self._write_batch(batch, batch_idx, "predictions")

    def _write_batch(self, batch: dict[str, Any], batch_idx: int, folder: str) -> list[Path]:
        shape = self.batch_latent_shape(batch)
        prefix = f"batch{batch_idx:04d}"
        return write_videos(self, self.run_dir / folder, prefix, batch["caption"], shape)

    def generate(self, captions: list[str], shape: tuple[int, ...]) -> torch.Tensor:
        """Videos ``[B, 3, T, H, W]`` in [-1, 1], one per caption, sampled from latents of
        ``shape`` ``(C, T, H, W)`` with this model's sampling hyperparameters and noise seeded by
        ``seed`` alone: the same videos in every run with the same seed and weights."""
        latents = sample_videos(
            self.dit,
            self.text_encoder(captions),
            self.text_encoder([""]),
            shape,
            steps=self.hparams.sample_steps,
            guidance_scale=self.hparams.guidance_scale,
            flow_shift=self.hparams.flow_shift,
            dense_fraction=self.hparams.dense_fraction,
            scheduler=self.hparams.sample_scheduler,
            generator=step_generator(self.device, self.hparams.seed, 2_000_000),
        )
        return self.to_pixels(latents)

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos ``[B, 3, T, H, W]`` in [-1, 1] of the DiT's ``latents`` (decoded by the VAE)."""
        return latents if self.codec is None else self.codec.decode(latents)

    @property
    def run_dir(self) -> Path:
        """The run directory: the trainer's log dir (config, logs, checkpoints, samples). Under DDP
        every rank must ask (the trainer broadcasts rank 0's)."""
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

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
