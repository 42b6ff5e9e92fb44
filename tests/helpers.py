"""Shared test helpers."""

from pathlib import Path

import torch
import yaml

from vmoba.attention import vmoba_attention

CONFIGS = Path(__file__).resolve().parent / "configs"


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()


def random_qkv(batch, tokens, heads, dim, *, dtype=torch.float32, seed=0, grad=True):
    """Fresh seeded random q, k, v ``[B, S, H, D]`` (leaf tensors)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, tokens, heads, dim, generator=gen, dtype=dtype).requires_grad_(grad)
        for _ in range(3)
    )


def save_tiny_wan(root: Path) -> Path:
    """Save a tiny random Wan 2.1 pipeline (transformer of ``tests/configs/tiny_vae.yaml``,
    ``AutoencoderKLWan`` with z = 4, UMT5 encoder + ByT5 tokenizer, UniPC scheduler) to ``root``,
    laid out as diffusers lays out a downloaded one. Returns ``root``."""
    # Imported here: the attention tests use this module too and need none of these.
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    from vmoba.sampling import make_scheduler

    config = yaml.safe_load((CONFIGS / "tiny_vae.yaml").read_text())["model"]["transformer"]
    tokenizer = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipeline = WanPipeline(
            tokenizer=tokenizer,
            text_encoder=UMT5EncoderModel(UMT5Config(
                vocab_size=len(tokenizer), d_model=config["text_dim"], d_ff=64, num_heads=2,
                d_kv=config["text_dim"] // 2, num_layers=2,
            )),
            transformer=WanTransformer3DModel(**config),
            vae=AutoencoderKLWan(
                base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0],
            ),
            scheduler=make_scheduler("unipc", 3.0),
        )
    pipeline.save_pretrained(root)
    return root


class AttentionLayer(torch.nn.Module):
    """A module whose forward is one ``vmoba_attention`` call with fixed keyword arguments."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v):
        return vmoba_attention(q, k, v, **self.kwargs)
