"""What each metric's model receives, and where its model comes from.

Pins the inputs of every network the metrics run (value range, normalisation constants, resize
method, crop, padding, frame sampling, which of the model's outputs is used) and that each
``from_options`` builds its model from the local file given in ``Options.weights``, in eval mode,
on ``Options.device``. Spies (tiny modules recording their calls) stand in for the networks; every
expected input is computed here independently, from the published constants and torch's own
resize / numpy's pad, never by calling the transform under test. The ``meta`` device stands in for
an accelerator: a model moved there, or an input that reached it, shows on the CPU.

CPU only. The DINO checkpoint (ViT-B/16, 86M parameters) is written and loaded once per module.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchmetrics.functional.image.lpips as torchmetrics_lpips
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.models import alexnet
from torchvision.models.optical_flow import raft_large, raft_small

import eval.metrics.flow as flow_metrics
from eval.metrics import consistency, weights
from eval.metrics.base import MetricUnavailable, Options, Sample
from eval.metrics.consistency import BackgroundConsistency, SubjectConsistency
from eval.metrics.flow import DynamicDegree, RaftFlow
from eval.metrics.pixel import LPIPS, SSIM, TemporalFlickering, temporal_flickering_score
from eval.metrics.quality import ImagingQuality
from eval.metrics.text import ClipScore

# Published preprocessing constants, written out rather than imported from the code under test.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LOADERS = (
    weights.load_dino,
    weights.load_clip,
    weights.load_raft,
    weights.load_musiq,
    weights.load_lpips,
)


# --- videos and expected inputs ---------------------------------------------------------------


def random_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Seeded uniform-noise uint8 RGB video ``[T, H, W, 3]``: any change of resize or crop shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def unit_frames(video: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` in [0, 1] (channels stay R, G, B)."""
    return torch.from_numpy(video.astype(np.float32) / 255).permute(0, 3, 1, 2)


def signed_frames(video: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(video.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)


def normalised(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(images - mean) / std`` per channel of ``[N, 3, H, W]``."""
    return (images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def assert_same_input(got: torch.Tensor, expected: torch.Tensor) -> None:
    """``got`` is float32 and equals ``expected`` in shape and, up to float32 rounding, values."""
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# --- stand-in models --------------------------------------------------------------------------


class Spy(torch.nn.Module):
    """Stands in for a network: records every call's arguments and answers ``respond(*args,
    **kwargs)``. It holds one parameter, so ``.to(device)`` and "the model's device" mean what
    they mean for a real network."""

    def __init__(self, respond: Callable) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.respond = respond
        self.calls: list[tuple[tuple, dict]] = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.respond(*args, **kwargs)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """The first positional argument of each call."""
        return [args[0] for args, _ in self.calls]


class SpyClip(Spy):
    """An open_clip model as the metrics use it: ``visual.image_size``, ``encode_image`` (recorded
    as calls) and ``encode_text`` (token ids recorded in ``texts``)."""

    def __init__(self, image_size: int) -> None:
        super().__init__(features)
        self.visual = SimpleNamespace(image_size=image_size)
        self.texts: list[torch.Tensor] = []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.texts.append(tokens)
        return features(tokens)


class FakeMusiq(Spy):
    """pyiqa's ``MUSIQ`` as ``load_musiq`` uses it: built with keyword arguments (recorded in
    ``kwargs``), loads the file at ``pretrained_model_path`` (here a plain state dict), and scores
    a frame ``[1, 3, H, W]`` as 100 times its red channel's mean."""

    def __init__(self, **kwargs) -> None:
        super().__init__(lambda frame: 100 * frame[:, 0].mean().reshape(1, 1))
        self.kwargs = kwargs
        self.load_state_dict(torch.load(kwargs["pretrained_model_path"], weights_only=True))


def features(images: torch.Tensor, *_) -> torch.Tensor:
    """An image or text encoder's answer: ones ``[N, 4]`` on the CPU, whatever the input device."""
    return torch.ones(len(images), 4)


def tokenize(texts: list[str]) -> torch.Tensor:
    """A tokenizer's answer: zero token ids ``[N, 77]``."""
    return torch.zeros(len(texts), 77, dtype=torch.long)


def uniform_flow(frame: torch.Tensor, pixels: float) -> torch.Tensor:
    """Flow ``[1, 2, H, W]`` moving every pixel of ``frame`` ``pixels`` to the right."""
    flow = torch.zeros(1, 2, *frame.shape[-2:])
    flow[:, 0] = pixels
    return flow


def raft_refinements(descending: bool = False) -> Callable:
    """A fake RAFT forward with torchvision's signature: one uniform flow per refinement, refinement
    i moving i pixels (``descending``: n - 1 - i), so the first and the last differ."""

    def forward(frame1, frame2, num_flow_updates: int = 12) -> list[torch.Tensor]:
        pixels = range(num_flow_updates)
        return [uniform_flow(frame1, p) for p in (reversed(pixels) if descending else pixels)]

    return forward


# --- local weights files ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalWeights:
    """A weights file written for a test, and what a model loaded from it must hold."""

    key: str  # its Options.weights key
    path: Path
    published: str  # the published file name the "missing" message must name
    expected: dict[str, torch.Tensor]  # state-dict entries of the loaded model the file sets
    choices: dict = field(default_factory=dict)  # other Options fields: clip_model, raft_arch

    def options(self, **overrides) -> Options:
        """Options giving this file; checksums off, the weights being random."""
        given = {self.key: self.path}
        return Options(weights=given, check_weights=False, **self.choices, **overrides)


def dino_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of DINO's ``dino_vitbase16_pretrain.pth``
    (ViT-B/16: width 768, 12 blocks, 14 x 14 patches and a CLS token, no head)."""
    block = {
        "norm1.weight": (768,),
        "norm1.bias": (768,),
        "attn.qkv.weight": (2304, 768),
        "attn.qkv.bias": (2304,),
        "attn.proj.weight": (768, 768),
        "attn.proj.bias": (768,),
        "norm2.weight": (768,),
        "norm2.bias": (768,),
        "mlp.fc1.weight": (3072, 768),
        "mlp.fc1.bias": (3072,),
        "mlp.fc2.weight": (768, 3072),
        "mlp.fc2.bias": (768,),
    }
    shapes = {
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 197, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "patch_embed.proj.bias": (768,),
        **{f"blocks.{i}.{name}": shape for i in range(12) for name, shape in block.items()},
        "norm.weight": (768,),
        "norm.bias": (768,),
    }
    gen = torch.Generator().manual_seed(seed)
    return {name: 0.02 * torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def write_weights(directory: Path, key: str, published: str, state: dict, **kwargs) -> LocalWeights:
    """Save ``state`` to ``directory/published`` (any name works; this one reads well in failures);
    ``kwargs``: :class:`LocalWeights` fields, ``expected`` defaulting to ``state``."""
    path = directory / published
    torch.save(state, path)
    return LocalWeights(key, path, published, **{"expected": state, **kwargs})


def write_raft(tmp_path_factory, arch: str) -> LocalWeights:
    """A random torchvision RAFT ``arch`` state dict, as its published file holds."""
    torch.manual_seed(0)
    model = {"small": raft_small, "large": raft_large}[arch](weights=None)
    published = weights.CANONICAL_FILES[("raft", arch)]
    directory = tmp_path_factory.mktemp(f"raft_{arch}")
    state, choices = model.state_dict(), {"raft_arch": arch}
    return write_weights(directory, "raft", published, state, choices=choices)


@pytest.fixture(scope="module")
def dino_weights(tmp_path_factory) -> LocalWeights:
    """A DINO-format ViT-B/16 checkpoint of random values."""
    directory = tmp_path_factory.mktemp("dino")
    return write_weights(directory, "dino", "dino_vitbase16_pretrain.pth", dino_checkpoint())


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> LocalWeights:
    """A tiny random open_clip CLIP's state dict; its config is registered with open_clip."""
    directory = tmp_path_factory.mktemp("clip")
    vision = {"image_size": 32, "patch_size": 16, "layers": 1, "width": 32, "head_width": 16}
    text = {"context_length": 77, "vocab_size": 49408, "layers": 1, "width": 16, "heads": 2}
    config = {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}
    (directory / "tiny-input-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(directory / "tiny-input-test-clip.json")
    torch.manual_seed(0)
    state = open_clip.CLIP(**config).state_dict()
    choices = {"clip_model": "tiny-input-test-clip"}
    return write_weights(directory, "clip", "open_clip_pytorch_model.bin", state, choices=choices)


@pytest.fixture(scope="module")
def raft_small_weights(tmp_path_factory) -> LocalWeights:
    return write_raft(tmp_path_factory, "small")


@pytest.fixture(scope="module")
def raft_large_weights(tmp_path_factory) -> LocalWeights:
    return write_raft(tmp_path_factory, "large")


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> LocalWeights:
    """A random torchvision AlexNet state dict (``features.*`` and ``classifier.*``, as the
    published file); the LPIPS net must hold its convolutions and torchmetrics' linear heads."""
    torch.manual_seed(0)
    state = alexnet(weights=None).state_dict()
    # LPIPS slices AlexNet's features after each ReLU; children keep torchvision's indices.
    slice_of_conv = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    expected = {
        f"net.slice{s}.{i}.{p}": state[f"features.{i}.{p}"]
        for i, s in slice_of_conv.items()
        for p in ("weight", "bias")
    }
    heads = Path(torchmetrics_lpips.__file__).parent / "lpips_models" / "alex.pth"
    expected |= torch.load(heads, map_location="cpu", weights_only=True)
    directory = tmp_path_factory.mktemp("lpips")
    return write_weights(directory, "lpips", "alexnet-owt-7be5be79.pth", state, expected=expected)


@pytest.fixture
def fake_pyiqa(monkeypatch) -> None:
    """Installs a fake ``pyiqa.archs.musiq_arch`` whose ``MUSIQ`` is :class:`FakeMusiq`."""
    arch = types.ModuleType("pyiqa.archs.musiq_arch")
    arch.MUSIQ = FakeMusiq
    for name in ("pyiqa", "pyiqa.archs"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "pyiqa.archs.musiq_arch", arch)


@pytest.fixture
def musiq_weights(tmp_path, fake_pyiqa) -> LocalWeights:
    """A file :class:`FakeMusiq` loads: its one parameter set to 0.25."""
    state = {"weight": torch.tensor(0.25)}
    return write_weights(tmp_path, "musiq", "musiq_spaq_ckpt-358bb6af.pth", state)


def clear_loader_caches() -> None:
    """Forgets every model the loaders cached."""
    for loader in LOADERS:
        loader.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def release_models_after_module():
    """Frees the module's cached models (DINO ViT-B alone is 344 MB) for the rest of the session."""
    yield
    clear_loader_caches()


@pytest.fixture
def drop_loaded_models():
    """Empties the loaders' caches after the test (it moved a cached model to another device)."""
    yield
    clear_loader_caches()


# --- CLIP and DINO inputs ---------------------------------------------------------------------


def test_normalisation_constants_are_the_published_ones():
    # Digit by digit: a change below float32 resolution would not show in the model inputs.
    assert (consistency.CLIP_MEAN, consistency.CLIP_STD) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert (consistency.IMAGENET_MEAN, consistency.IMAGENET_STD) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(
    "build",
    [BackgroundConsistency, lambda model: ClipScore(model, tokenize)],
    ids=["background_consistency", "clip_score"],
)
def test_clip_gets_bicubic_centre_crop_clip_normalised(build):
    video = random_video(3, 48, 96)
    model = SpyClip(image_size=32)
    build(model)(Sample(video, prompt="a cat"))
    # Short side 48 -> 32 (96 -> 64), bicubic, no antialiasing; centre crop of 32 from 64: 16:48.
    resized = F.interpolate(unit_frames(video), (32, 64), mode="bicubic", align_corners=False)
    assert len(model.inputs) == 1  # all frames, one batch
    expected = normalised(resized[..., 16:48], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert_same_input(model.inputs[0], expected)


def test_dino_gets_bilinear_short_side_224_imagenet_normalised():
    video = random_video(2, 240, 400)
    model = Spy(features)
    SubjectConsistency(model)(Sample(video))
    # Short side 240 -> 224, long side int(224 * 400 / 240) = 373, bilinear without antialiasing;
    # no crop but the remainder below a multiple of the 16-pixel patch: 224 x 368.
    resized = F.interpolate(unit_frames(video), (224, 373), mode="bilinear", align_corners=False)
    assert len(model.inputs) == 1
    expected = normalised(resized[..., :224, :368], IMAGENET_MEAN, IMAGENET_STD)
    assert_same_input(model.inputs[0], expected)


# --- RAFT inputs and outputs ------------------------------------------------------------------


def test_raft_gets_8fps_pairs_in_minus_one_to_one_padded_to_8():
    video = random_video(9, 59, 90)
    flow = Spy(lambda frame1, frame2: uniform_flow(frame1, 0.0))
    DynamicDegree(flow)(Sample(video, fps=24.0))
    # 24 fps -> every 3rd frame; 59 x 90 -> 64 x 96, edge-padded, the odd pixel at the bottom.
    kept = np.pad(video[[0, 3, 6]], ((0, 0), (2, 3), (3, 3), (0, 0)), mode="edge")
    expected = signed_frames(kept)
    assert len(flow.calls) == 2
    for t, (frame1, frame2) in enumerate(args for args, _ in flow.calls):
        assert_same_input(frame1, expected[t : t + 1])
        assert_same_input(frame2, expected[t + 1 : t + 2])


@pytest.mark.parametrize(("descending", "dynamic"), [(False, 1.0), (True, 0.0)])
def test_dynamic_degree_uses_last_of_20_raft_refinements(
    descending, dynamic, monkeypatch, tmp_path
):
    raft = Spy(raft_refinements(descending))
    monkeypatch.setattr(flow_metrics, "load_raft", lambda path, arch: raft)
    (tmp_path / "raft.pth").touch()
    options = Options(weights={"raft": tmp_path / "raft.pth"}, check_weights=False)
    video = random_video(8, 64, 64)
    # Every pair's last refinement moves 19 px (0 px if descending); the threshold is 1.5 px.
    assert DynamicDegree.from_options(options)(Sample(video)) == dynamic
    assert [kwargs for _, kwargs in raft.calls] == [{"num_flow_updates": 20}] * 7
    frame1, frame2 = raft.calls[0][0]
    assert_same_input(frame1, signed_frames(video[:1]))
    assert_same_input(frame2, signed_frames(video[1:2]))


# --- MUSIQ inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "resized"),
    [(600, 300, (512, 256)), (300, 640, (240, 512)), (48, 64, None)],
)
def test_musiq_gets_local_path_and_unit_rgb_frames_longer_side_512(
    height, width, resized, musiq_weights
):
    metric = ImagingQuality.from_options(musiq_weights.options())
    assert metric.model.kwargs == {"pretrained_model_path": str(musiq_weights.path)}
    video = random_video(2, height, width)
    score = metric(Sample(video))
    expected = unit_frames(video)
    if resized is not None:  # bilinear, no antialiasing, as VBench's "longer" preprocessing
        expected = F.interpolate(expected, resized, mode="bilinear", align_corners=False)
    assert len(metric.model.inputs) == 2  # every frame, one at a time
    for got, frame in zip(metric.model.inputs, expected):
        assert_same_input(got, frame[None])
    assert score == pytest.approx(float(expected[:, 0].mean()), abs=1e-6)  # mean score / 100


def test_imaging_quality_without_pyiqa_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` raises ImportError
    (tmp_path / "musiq.pth").touch()
    options = Options(weights={"musiq": tmp_path / "musiq.pth"}, check_weights=False)
    with pytest.raises(MetricUnavailable, match="pyiqa"):
        ImagingQuality.from_options(options)


# --- pixel metrics: LPIPS range, SSIM data range, flickering ----------------------------------


def test_lpips_gets_both_videos_in_minus_one_to_one():
    video, reference = random_video(2, 16, 16, seed=1), random_video(2, 16, 16, seed=2)
    net = Spy(lambda a, b: torch.tensor([0.1, 0.3]).view(2, 1, 1, 1))
    assert LPIPS(net)(Sample(video, reference=reference)) == pytest.approx(0.2)  # frame mean
    (got_video, got_reference), _ = net.calls[0]
    assert_same_input(got_video, signed_frames(video))
    assert_same_input(got_reference, signed_frames(reference))


def test_ssim_constant_frames_known_answer_with_data_range_one():
    # Flat frames a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * data_range)^2.
    video = np.stack([np.full((16, 16, 3), value, np.uint8) for value in (51, 102)])  # 0.2, 0.4
    reference = np.full_like(video, 102)
    c1 = 0.01**2
    first = (2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1)  # 0.80010 (0.994 at data range 255)
    # 2e-5: float32 cancellation in torchmetrics' variances.
    assert SSIM()(Sample(video, reference=reference)) == pytest.approx((first + 1) / 2, abs=2e-5)


def test_ssim_matches_gaussian_11_sigma_1_5_on_unit_frames():
    video, reference = random_video(3, 32, 32, seed=1), random_video(3, 32, 32, seed=2)
    reference[:, :16] = video[:, :16]  # half equal, half independent noise
    gaussian_11 = {"gaussian_kernel": True, "kernel_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03}
    expected = structural_similarity_index_measure(
        unit_frames(video), unit_frames(reference), data_range=1.0, **gaussian_11
    )
    assert SSIM()(Sample(video, reference=reference)) == pytest.approx(float(expected), abs=1e-6)


def test_flickering_is_mean_over_pairs_of_mean_abs_difference():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[1, :, :4] = 20  # pair 0 -> 1: half the pixels change by 20, mean 10
    frames[2] = 40  # pair 1 -> 2: 20 on the left half, 40 on the right, mean 30
    expected = (255 - 20) / 255  # mean over pairs 20 (their max, 30, would give 225 / 255)
    assert temporal_flickering_score(frames) == pytest.approx(expected, abs=1e-12)
    assert temporal_flickering_score(frames[::-1]) == pytest.approx(expected, abs=1e-12)  # |.|
    assert TemporalFlickering()(Sample(frames)) == pytest.approx(expected, abs=1e-12)


# --- loading from local files -----------------------------------------------------------------


def test_load_dino_reads_dino_checkpoint_and_returns_final_norm_cls(dino_weights):
    weights.load_dino.cache_clear()  # a real load, not a model cached by another test
    model = weights.load_dino(str(dino_weights.path))
    state = model.state_dict()
    assert set(state) == set(dino_weights.expected)  # the checkpoint's tensors, no head
    for name, tensor in dino_weights.expected.items():
        assert torch.equal(state[name], tensor), name
    assert not model.training
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # 2 x 3 patches
    with torch.no_grad():
        cls, tokens = model(images), model.forward_features(images)
    assert cls.shape == (2, 768)
    assert torch.equal(cls, tokens[:, 0])  # CLS token after the final norm: DINO's output


FROM_OPTIONS = {
    "subject_consistency": (SubjectConsistency, "dino_weights", attrgetter("model")),
    "background_consistency": (BackgroundConsistency, "clip_weights", attrgetter("model")),
    "clip_score": (ClipScore, "clip_weights", attrgetter("model")),
    "dynamic_degree_small": (DynamicDegree, "raft_small_weights", attrgetter("flow.model")),
    "dynamic_degree_large": (DynamicDegree, "raft_large_weights", attrgetter("flow.model")),
    "imaging_quality": (ImagingQuality, "musiq_weights", attrgetter("model")),
    "lpips": (LPIPS, "lpips_weights", attrgetter("net")),
}
def cases(table: dict) -> list:
    """``table``'s entries as pytest params with their names as ids."""
    return [pytest.param(*entry, id=name) for name, entry in table.items()]


@pytest.mark.parametrize(("metric_cls", "weights_fixture", "model_of"), cases(FROM_OPTIONS))
def test_from_options_loads_the_given_file_in_eval_mode(
    metric_cls, weights_fixture, model_of, request
):
    local = request.getfixturevalue(weights_fixture)
    with pytest.raises(MetricUnavailable, match=re.escape(local.published)):
        metric_cls.from_options(Options(**local.choices))
    model = model_of(metric_cls.from_options(local.options()))
    state = model.state_dict()
    for name, tensor in local.expected.items():
        assert torch.equal(state[name], tensor), name
    assert not model.training


@pytest.mark.parametrize(
    ("metric_cls", "weights_fixture", "model_of"),
    cases(FROM_OPTIONS),
)
def test_from_options_puts_the_model_on_options_device(
    metric_cls, weights_fixture, model_of, request, drop_loaded_models
):
    local = request.getfixturevalue(weights_fixture)
    model = model_of(metric_cls.from_options(local.options(device="meta")))
    devices = {parameter.device.type for parameter in model.parameters()}
    assert devices == {"meta"}


SPIED = {  # name -> (metric around a spy, the spy)
    "subject_consistency": (SubjectConsistency, lambda: Spy(features)),
    "background_consistency": (BackgroundConsistency, lambda: SpyClip(32)),
    "clip_score": (lambda model: ClipScore(model, tokenize), lambda: SpyClip(32)),
    "dynamic_degree": (lambda raft: DynamicDegree(RaftFlow(raft)), lambda: Spy(raft_refinements())),
    "imaging_quality": (ImagingQuality, lambda: Spy(lambda frame: torch.full((1, 1), 50.0))),
    "lpips": (LPIPS, lambda: Spy(lambda a, b: torch.zeros(len(a), 1, 1, 1))),
}


@pytest.mark.parametrize(
    ("build", "spy_factory"),
    cases(SPIED),
)
def test_inputs_reach_the_model_device(build, spy_factory):
    spy = spy_factory().to("meta")
    video, reference = random_video(3, 64, 64), random_video(3, 64, 64, seed=1)
    build(spy)(Sample(video, reference=reference, prompt="a cat"))
    tensors = [arg for args, _ in spy.calls for arg in args if isinstance(arg, torch.Tensor)]
    tensors += getattr(spy, "texts", [])
    assert spy.calls and {tensor.device.type for tensor in tensors} == {"meta"}
