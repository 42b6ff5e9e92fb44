"""The frozen Wan 2.1 VAE as a codec between pixel videos and the DiT's normalised latents."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKLWan
from diffusers.utils.torch_utils import randn_tensor


def latent_size(
    frames: int, height: int, width: int, temporal: int, spatial: int
) -> tuple[int, int, int]:
    """``(T', H', W')`` of the latents of ``frames`` x ``height`` x ``width`` pixels under a causal
    video VAE with these compression factors (Wan 2.1: 4 and 8): the first frame stays alone."""
    return (frames - 1) // temporal + 1, height // spatial, width // spatial


class LatentCodec(torch.nn.Module):
    """Videos ``[B, 3, T, H, W]`` in [-1, 1] <-> latents ``[B, z, (T - 1) / 4 + 1, H / 8, W / 8]``
    normalised per channel with the VAE's ``latents_mean`` / ``latents_std`` (as Wan's pipeline).
    Frozen: no gradients, always in eval mode."""

    def __init__(self, vae: AutoencoderKLWan) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False)
        channels = (1, vae.config.z_dim, 1, 1, 1)
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean).view(channels), persistent=False)
        self.register_buffer("std", torch.tensor(vae.config.latents_std).view(channels), persistent=False)
        self.train(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> LatentCodec:
        """Load ``AutoencoderKLWan`` in ``dtype`` from a local folder (a Wan pipeline root with
        ``vae/`` works). The normalisation constants stay float32."""
        path = Path(path).expanduser()
        if (path / "vae").is_dir():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no Wan VAE (config.json) under {path}")
        return cls(AutoencoderKLWan.from_pretrained(path, local_files_only=True, torch_dtype=dtype))

    def train(self, mode: bool = True) -> LatentCodec:
        return super().train(False)

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """``(3, T, H, W)`` of a video -> ``(z, T', H', W')`` of its latents."""
        config = self.vae.config
        size = latent_size(*shape[1:], config.scale_factor_temporal, config.scale_factor_spatial)
        return config.z_dim, *size

    @torch.no_grad()
    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``[B, z, T', H', W']`` (VAE dtype, not normalised) of the
        VAE's latent distribution of ``video``. Each clip is encoded alone, as Wan's own VAE
        wrapper does, so its latents do not depend on its batch-mates (nor on the batch size)."""
        video = video.to(self.vae.dtype)
        dists = [self.vae.encode(clip.unsqueeze(0)).latent_dist for clip in video]
        return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])

    def sample(
        self, mean: torch.Tensor, std: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Normalised float32 latents drawn from the posterior ``(mean, std)`` of :meth:`posterior`
        (the same draw as diffusers' ``DiagonalGaussianDistribution.sample(generator)``)."""
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return ((mean + std * noise).float() - self.mean) / self.std

    def encode(
        self, video: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Sampled, normalised latents of ``video`` (``generator`` makes the sample repeatable)."""
        return self.sample(*self.posterior(video), generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos in [-1, 1] of normalised ``latents``."""
        video = self.vae.decode((latents * self.std + self.mean).to(self.vae.dtype)).sample
        return video.float().clamp(-1, 1)
