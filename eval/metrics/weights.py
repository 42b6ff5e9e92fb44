"""Loading pretrained models from local files only (nothing is ever downloaded).

Weights whose canonical file names carry a checksum (torchvision's ``name-<sha256 prefix>.pth``
convention: RAFT, the LPIPS backbones, MUSIQ) are checked against it, whatever the local file is
called, so weights of the right shapes but other values do not load silently; ``Options.
check_weights=False`` (``eval.run --no-weight-check``) opts out, e.g. for fine-tuned weights. The
DINO and CLIP files have no published checksum and are loaded as given.

Each loader is cached on its plain-Python arguments, so metrics sharing a model load it once.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from data.fsutil import file_sha256
from eval.metrics.base import MetricUnavailable, Options

# What each ``--weights KEY=PATH`` expects; quoted in "unavailable" reasons.
WEIGHT_FILES: dict[str, str] = {
    "dino": "DINO ViT-B/16 checkpoint dino_vitbase16_pretrain.pth "
    "(dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/), the model VBench uses",
    "clip": "open_clip checkpoint for --clip-model (default ViT-B-32-quickgelu = OpenAI CLIP "
    "ViT-B/32 as in VBench: open_clip_pytorch_model.bin from HF timm/vit_base_patch32_clip_224.openai)",
    "raft": "torchvision RAFT state dict for --raft-arch (large: raft_large_C_T_V1-22a6c225.pth, "
    "the port of RAFT raft-things.pth that VBench uses; small: raft_small_C_T_V2-01064c6d.pth)",
    "musiq": "pyiqa MUSIQ checkpoint musiq_spaq_ckpt-358bb6af.pth as in VBench "
    "(also needs `pip install pyiqa`, the `iqa` extra)",
    "lpips": "torchvision ImageNet backbone for --lpips-net (alex: alexnet-owt-7be5be79.pth, "
    "vgg: vgg16-397923af.pth); the LPIPS linear heads ship with torchmetrics",
}

# (weights key, variant) -> canonical file name; its last ``-`` part is a sha256 prefix.
CANONICAL_FILES: dict[tuple[str, str], str] = {
    ("raft", "large"): "raft_large_C_T_V1-22a6c225.pth",
    ("raft", "small"): "raft_small_C_T_V2-01064c6d.pth",
    ("lpips", "alex"): "alexnet-owt-7be5be79.pth",
    ("lpips", "vgg"): "vgg16-397923af.pth",
    ("musiq", ""): "musiq_spaq_ckpt-358bb6af.pth",
}


class WeightMismatch(ValueError):
    """A weights file is not the published file its key expects (sha256 differs)."""


def published_checksum(key: str, variant: str = "") -> str | None:
    """The sha256 prefix the canonical file name of ``(key, variant)`` carries, or None."""
    name = CANONICAL_FILES.get((key, variant))
    return None if name is None else Path(name).stem.rsplit("-", 1)[1]


@functools.cache
def sha256_of(path: str) -> str:
    """:func:`data.fsutil.file_sha256` of the file at ``path``, cached per path (several metrics
    may load one file)."""
    return file_sha256(path)


def weight_path(options: Options, key: str, variant: str = "") -> str:
    """The local file given as ``--weights key=PATH``, checked against its published checksum.

    Args:
        options: the run's options (``weights``, ``check_weights``).
        key: a :data:`WEIGHT_FILES` key.
        variant: the architecture for keys with several (``raft_arch``, ``lpips_net``).

    Raises:
        MetricUnavailable: ``key`` was not given; the message names the expected file.
        FileNotFoundError: the path is not a file.
        WeightMismatch: checking is on and the file's sha256 does not start with the prefix of
            ``CANONICAL_FILES[(key, variant)]``.
    """
    if key not in options.weights:
        raise MetricUnavailable(f"needs --weights {key}=PATH: {WEIGHT_FILES[key]}")
    path = str(options.weights[key])
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"--weights {key}={path}: no such file; expected {WEIGHT_FILES[key]}"
        )
    expected = published_checksum(key, variant)
    if options.check_weights and expected is not None:
        actual = sha256_of(path)
        if not actual.startswith(expected):
            raise WeightMismatch(
                f"--weights {key}={path}: sha256 {actual[:16]}... is not the published "
                f"{CANONICAL_FILES[(key, variant)]} (sha256 {expected}...); pass "
                "--no-weight-check to use other weights of the same architecture"
            )
    return path


@functools.cache
def load_dino(path: str) -> torch.nn.Module:
    """DINO ViT-B/16 (timm, no head): ``[N, 3, H, W]`` ImageNet-normalised -> CLS features ``[N, 768]``."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(
        "vit_base_patch16_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model.eval()


@functools.cache
def load_clip(path: str, model_name: str) -> tuple[torch.nn.Module, object]:
    """open_clip model ``model_name`` with weights from ``path``, and its tokenizer."""
    import open_clip

    model = open_clip.create_model(model_name, pretrained=path, require_pretrained=True)
    return model.eval(), open_clip.get_tokenizer(model_name)


@functools.cache
def load_raft(path: str, arch: str) -> torch.nn.Module:
    """torchvision RAFT (``arch`` 'large' or 'small') with the state dict at ``path``."""
    from torchvision.models.optical_flow import raft_large, raft_small

    builders = {"large": raft_large, "small": raft_small}
    if arch not in builders:
        raise ValueError(f"raft_arch must be one of {sorted(builders)}, got {arch!r}")
    model = builders[arch](weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@functools.cache
def load_musiq(path: str) -> torch.nn.Module:
    """pyiqa MUSIQ with the checkpoint at ``path``: ``[1, 3, H, W]`` in [0, 1] -> score (0-100)."""
    from pyiqa.archs.musiq_arch import MUSIQ

    return MUSIQ(pretrained_model_path=path).eval()


@functools.cache
def load_lpips(path: str, net: str) -> torch.nn.Module:
    """torchmetrics' LPIPS network with its bundled linear heads and the backbone from ``path``."""
    from torchmetrics.functional.image.lpips import _LPIPS

    if net not in ("alex", "vgg"):
        raise ValueError(f"lpips_net must be 'alex' or 'vgg', got {net!r}")
    lpips = _LPIPS(pretrained=True, net=net, pnet_rand=True)  # random backbone, replaced below
    backbone = torch.load(path, map_location="cpu", weights_only=True)
    # The backbone is split into slices whose children keep torchvision's ``features`` indices.
    lpips.net.load_state_dict(
        {name: backbone["features." + name.split(".", 1)[1]] for name in lpips.net.state_dict()}
    )
    return lpips.eval()
