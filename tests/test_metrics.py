"""Known-answer tests of eval.metrics and the eval.run CLI, with random or exact toy models."""

import json
import math
import shutil

import numpy as np
import open_clip
import pytest
import timm
import torch
from helpers import strict_json
from torchvision.models import alexnet
from torchvision.models.optical_flow import raft_small

from data.video_io import write_mp4
from eval import run as cli
from eval.metrics import METRICS, MetricUnavailable, Options, Sample, get_metric, missing_inputs
from eval.metrics.consistency import (
    BackgroundConsistency,
    SubjectConsistency,
    clip_transform,
    consistency_score,
    dino_transform,
)
from eval.metrics.flow import DynamicDegree, is_dynamic, pad_to_multiple, top_flow_magnitude
from eval.metrics.pixel import LPIPS, PSNR, SSIM, TemporalFlickering, temporal_flickering_score
from eval.metrics.quality import ImagingQuality, limit_longer_side
from eval.metrics.text import ClipScore, frame_text_similarity
from eval.metrics.video import read_prompts, read_video
from eval.metrics.weights import (
    CANONICAL_FILES,
    WeightMismatch,
    load_lpips,
    load_raft,
    published_checksum,
    sha256_of,
    weight_path,
)

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def texture(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image ``[H, W, 3]`` (low frequencies, so shifts stay similar)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8, width // 8, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")
    return (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def moving(frames: int = 8, step: int = 3, **kwargs) -> np.ndarray:
    """uint8 ``[T, H, W, 3]``: :func:`texture` rolled right by ``step`` pixels per frame."""
    image = texture(**kwargs)
    return np.stack([np.roll(image, step * t, axis=1) for t in range(frames)])


def shift_flow(frame1: torch.Tensor, frame2: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Exact flow for circular global shifts: the integer shift best mapping frame1 onto frame2.

    ``[1, 3, H, W]`` x 2 -> uniform flow ``[1, 2, H, W]`` (x, y) in pixels.
    """
    shifts = [(dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)]
    errors = [(torch.roll(frame1, (dy, dx), (2, 3)) - frame2).abs().mean() for dx, dy in shifts]
    dx, dy = shifts[int(torch.stack(errors).argmin())]
    return (
        torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, *frame1.shape[2:])
    )


@pytest.fixture(scope="module")
def tiny_clip():
    """A randomly initialised tiny open_clip CLIP and the standard CLIP tokenizer."""
    torch.manual_seed(0)
    return open_clip.CLIP(**TINY_CLIP).eval(), open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def tiny_vit():
    """A randomly initialised tiny timm ViT without head (DINO-like CLS features)."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        depth=2,
        embed_dim=64,
        num_heads=2,
    ).eval()


# --- temporal flickering, imaging quality ---------------------------------------------------


def test_temporal_flickering_known_answers():
    static = np.repeat(texture()[None], 5, axis=0)
    assert temporal_flickering_score(static) == 1.0
    assert TemporalFlickering()(Sample(static)) == 1.0
    blink = np.zeros((4, 8, 8, 3), np.uint8)
    blink[1::2] = 255
    assert temporal_flickering_score(blink) == 0.0
    ramp = np.stack([np.full((8, 8, 3), 10 * t, np.uint8) for t in range(6)])
    assert temporal_flickering_score(ramp) == pytest.approx((255 - 10) / 255, abs=1e-12)


def test_imaging_quality_averages_frames_and_limits_size():
    frames = np.stack([np.full((600, 300, 3), v, np.uint8) for v in (51, 102)])
    seen = []

    def brightness(frame):
        seen.append(tuple(frame.shape))
        return 100 * frame.mean()

    assert ImagingQuality(brightness)(Sample(frames)) == pytest.approx(0.3, abs=1e-6)
    assert seen == [(1, 3, 512, 256)] * 2
    assert limit_longer_side(torch.zeros(1, 3, 64, 32)).shape == (1, 3, 64, 32)


# --- dynamic degree ---------------------------------------------------------------------------


def test_top_flow_magnitude_and_rule():
    flow = torch.zeros(2, 10, 10)
    flow[0, 0, :5] = 3.0
    flow[1, 0, :5] = 4.0  # 5 of 100 pixels move by 5 px: exactly the top 5%
    assert top_flow_magnitude(flow) == pytest.approx(5.0)
    # 16 frames need 4 moving pairs; threshold 6 px at short side 256, 3 px at 128.
    assert is_dynamic([7.0] * 4 + [0.0] * 11, 256, 512)
    assert not is_dynamic([7.0] * 3 + [0.0] * 12, 256, 512)
    assert is_dynamic([3.5] * 4 + [0.0] * 11, 128, 128)
    assert not is_dynamic([5.9] * 15, 256, 256)


def test_pad_to_multiple_centres_replicate_padding():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., 1:3, 0:3], x)


def test_dynamic_degree_static_zero_moving_one():
    metric = DynamicDegree(shift_flow)
    assert metric(Sample(np.repeat(texture()[None], 8, axis=0))) == 0.0
    # 64 px short side: threshold 1.5 px; 3 px per frame moves.
    assert metric(Sample(moving(step=3))) == 1.0
    assert metric(Sample(moving(step=1))) == 0.0
    # At 16 fps every second frame is kept (VBench samples 8 fps): 1 px per frame -> 2 px per pair.
    assert metric(Sample(moving(frames=16, step=1), fps=16.0)) == 1.0


def test_load_raft_from_local_state_dict(tmp_path):
    torch.manual_seed(0)
    model = raft_small(weights=None)
    torch.save(model.state_dict(), tmp_path / "raft.pth")
    loaded = load_raft(str(tmp_path / "raft.pth"), "small")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="raft_arch"):
        load_raft(str(tmp_path / "raft.pth"), "huge")


# --- PSNR / SSIM / LPIPS ----------------------------------------------------------------------


def test_reference_metrics_identical_and_known_psnr():
    video = moving(frames=4)
    same = Sample(video, reference=video.copy())
    assert PSNR()(same) == math.inf
    assert SSIM()(same) == pytest.approx(1.0, abs=1e-6)
    noisy = video.astype(np.int16)
    noisy[..., 0] += np.where(np.arange(64) % 2 == 0, 5, -5)  # |error| 5 on one channel of three
    noisy = noisy.clip(0, 255).astype(np.uint8)
    mse = ((noisy.astype(np.float64) - video) / 255) ** 2
    expected = np.mean([10 * np.log10(1 / m.mean()) for m in mse])
    pair = Sample(video, reference=noisy)
    assert PSNR()(pair) == pytest.approx(expected, rel=1e-5)
    assert SSIM()(pair) < 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        PSNR()(Sample(video, reference=video[:2]))


def test_lpips_with_backbone_from_local_file(tmp_path):
    torch.manual_seed(0)
    features = alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "alex.pth")
    metric = LPIPS(load_lpips(str(tmp_path / "alex.pth"), "alex"))
    assert torch.equal(metric.net.net.slice1[0].weight, features["0.weight"])
    video = moving(frames=2)
    assert metric(Sample(video, reference=video.copy())) == 0.0
    assert metric(Sample(video, reference=255 - video)) > 0.0


# --- subject / background consistency ---------------------------------------------------------


def test_consistency_score_known_answers():
    assert consistency_score(torch.ones(4, 3)) == pytest.approx(1.0)
    eye = torch.eye(3)  # orthogonal frames: 0 to first and previous
    assert consistency_score(eye) == 0.0
    # frames [e0, e0, -e0]: t=1 -> 1, t=2 -> max(0, -1) = 0 for both terms.
    assert consistency_score(torch.stack([eye[0], eye[0], -eye[0]])) == pytest.approx(0.5)


def test_dino_transform_short_side_and_patch_multiple():
    assert dino_transform(torch.rand(2, 3, 64, 114)).shape == (2, 3, 224, 384)
    assert clip_transform(torch.rand(2, 3, 64, 114), 32).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kind", ["subject", "background"])
def test_shuffling_frames_lowers_consistency(kind, tiny_vit, tiny_clip):
    metric = (
        SubjectConsistency(tiny_vit) if kind == "subject" else BackgroundConsistency(tiny_clip[0])
    )
    start, end = texture(seed=1).astype(np.float64), texture(seed=2).astype(np.float64)
    video = (
        np.stack([(1 - a) * start + a * end for a in np.linspace(0, 1, 8)]).round().astype(np.uint8)
    )
    shuffled = video[[0, 4, 1, 7, 2, 6, 3, 5]]  # same first frame: only neighbours change
    static = np.repeat(video[:1], 8, axis=0)
    smooth, jumbled = metric(Sample(video)), metric(Sample(shuffled))
    assert metric(Sample(static)) == pytest.approx(1.0, abs=1e-6)
    assert smooth < 1.0
    assert jumbled < smooth


# --- CLIP text similarity ---------------------------------------------------------------------


def test_clip_text_scores(tiny_clip):
    model, tokenizer = tiny_clip
    video = moving(frames=3)
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        image = model.encode_image(clip_transform(frames, 32))  # [3, 32]
        text = model.encode_text(tokenizer(["a cat"]))  # [1, 32]
    expected = 100 * torch.nn.functional.cosine_similarity(image, text).double()  # [3]
    with torch.no_grad():
        sims = frame_text_similarity(model, tokenizer, frames, "a cat")
    torch.testing.assert_close(sims, expected, rtol=1e-5, atol=1e-4)
    sample = Sample(video, prompt="a cat")
    assert ClipScore(model, tokenizer)(sample) == pytest.approx(
        float(expected.clamp(min=0).mean()), abs=1e-4
    )
    with pytest.raises(ValueError, match="prompt"):
        ClipScore(model, tokenizer)(Sample(video))


# --- prompts, registry, CLI -------------------------------------------------------------------


def test_read_prompts_formats(tmp_path):
    names = ["a.mp4", "b.mp4"]
    (tmp_path / "p.txt").write_text("first\nsecond\n")
    (tmp_path / "p.json").write_text(json.dumps({"b.mp4": "second", "a.mp4": "first"}))
    (tmp_path / "p.csv").write_text('filename,prompt\nb.mp4,second\na.mp4,"first"\n')
    for name in ("p.txt", "p.json", "p.csv"):
        assert read_prompts(tmp_path / name, names) == {"a.mp4": "first", "b.mp4": "second"}
    with pytest.raises(ValueError, match="1 prompts for 2 videos"):
        (tmp_path / "short.txt").write_text("only\n")
        read_prompts(tmp_path / "short.txt", names)
    with pytest.raises(ValueError, match="no prompt"):
        read_prompts(tmp_path / "p.json", [*names, "c.mp4"])


def test_registry_names_and_missing_inputs():
    assert set(METRICS) == {
        "psnr",
        "ssim",
        "lpips",
        "subject_consistency",
        "background_consistency",
        "dynamic_degree",
        "imaging_quality",
        "clip_score",
        "temporal_flickering",
    }
    with pytest.raises(ValueError, match="valid: psnr"):
        get_metric("fvd")
    reason = missing_inputs(get_metric("clip_score"), {}, has_reference=False, has_prompts=False)
    assert "--weights clip=PATH" in reason and "--prompts" in reason
    assert missing_inputs(get_metric("psnr"), {}, has_reference=True, has_prompts=False) is None
    assert missing_inputs(get_metric("temporal_flickering"), {}, False, False) is None


@pytest.fixture
def video_dirs(tmp_path):
    """Two tiny mp4 videos (static and moving) and a same-named copy as the reference."""
    videos, reference = tmp_path / "videos", tmp_path / "reference"
    videos.mkdir()
    reference.mkdir()
    write_mp4(videos / "b_moving.mp4", moving(frames=6, step=4, height=64, width=96))
    write_mp4(videos / "a_static.mp4", np.repeat(texture(64, 96)[None], 6, axis=0))
    for path in videos.iterdir():
        shutil.copy(path, reference / path.name)
    return videos, reference


def test_cli_selected_metrics(video_dirs, tmp_path):
    videos, reference = video_dirs
    out = tmp_path / "out" / "scores.json"
    cli.main(
        [
            "--videos",
            str(videos),
            "--reference",
            str(reference),
            "--metrics",
            "psnr",
            "ssim",
            "temporal_flickering",
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["videos"] == ["a_static.mp4", "b_moving.mp4"]
    assert list(report["metrics"]) == ["psnr", "ssim", "temporal_flickering"]
    psnr = report["metrics"]["psnr"]  # identical videos: inf, written as null and named
    assert psnr["mean"] is None and psnr["per_video"] == {"a_static.mp4": None, "b_moving.mp4": None}
    assert psnr["non_finite"] == {"a_static.mp4": "inf", "b_moving.mp4": "inf", "mean": "inf"}
    assert report["metrics"]["ssim"]["per_video"]["b_moving.mp4"] == pytest.approx(1.0, abs=1e-6)
    flicker = report["metrics"]["temporal_flickering"]["per_video"]
    assert (
        flicker["a_static.mp4"] == pytest.approx(1.0, abs=2e-3) and flicker["b_moving.mp4"] < 0.99
    )
    table = out.with_suffix(".md").read_text()
    assert "| psnr | inf |" in table and "| a_static.mp4 |" in table


def test_cli_skips_and_reports_a_corrupt_video(video_dirs, tmp_path, capsys):
    videos, _ = video_dirs
    (videos / "c_corrupt.mp4").write_bytes(b"not an mp4")
    out = tmp_path / "scores.json"
    with pytest.warns(UserWarning, match="skipping unreadable video"):
        cli.main(["--videos", str(videos), "--metrics", "temporal_flickering", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["videos"] == ["a_static.mp4", "b_moving.mp4"]
    assert list(report["skipped"]) == ["c_corrupt.mp4"]
    assert set(report["metrics"]["temporal_flickering"]["per_video"]) == set(report["videos"])
    assert "[2/3] b_moving.mp4" in capsys.readouterr().out  # a line of progress per video


def test_cli_default_metrics_report_unavailable(video_dirs, tmp_path):
    videos, _ = video_dirs
    out = tmp_path / "scores.json"
    cli.main(["--videos", str(videos), "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert list(metrics) == list(METRICS)
    assert set(metrics["temporal_flickering"]["per_video"]) == {"a_static.mp4", "b_moving.mp4"}
    unavailable = {name: m["unavailable"] for name, m in metrics.items() if "unavailable" in m}
    assert set(unavailable) == set(METRICS) - {"temporal_flickering"}
    assert "--reference" in unavailable["psnr"]
    assert "dino=PATH" in unavailable["subject_consistency"]
    assert "raft=PATH" in unavailable["dynamic_degree"]
    assert "musiq_spaq_ckpt" in unavailable["imaging_quality"]
    assert "--prompts" in unavailable["clip_score"] and "clip=PATH" in unavailable["clip_score"]
    assert "unavailable: needs --weights lpips=PATH" in out.with_suffix(".md").read_text()


def test_cli_with_local_clip_weights(video_dirs, tmp_path, tiny_clip):
    """``--weights clip=PATH`` with a tiny CLIP registered as an open_clip model config."""
    videos, _ = video_dirs
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.save(tiny_clip[0].state_dict(), tmp_path / "clip.pt")
    out = tmp_path / "scores.json"
    (tmp_path / "prompts.txt").write_text("a still scene\na moving scene\n")
    cli.main(
        [
            "--videos",
            str(videos),
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--metrics",
            "background_consistency",
            "clip_score",
            "--weights",
            f"clip={tmp_path / 'clip.pt'}",
            "--clip-model",
            "tiny-test-clip",
            "--out",
            str(out),
        ]
    )
    metrics = json.loads(out.read_text())["metrics"]
    for name in ("a_static.mp4", "b_moving.mp4"):
        sample = Sample(read_video(videos / name)[0])
        expected = BackgroundConsistency(tiny_clip[0])(sample)
        assert metrics["background_consistency"]["per_video"][name] == pytest.approx(expected)
    assert 0 <= metrics["clip_score"]["mean"] <= 100


# --- weights checksums, strict output, provenance ---------------------------------------------


def test_weights_are_checked_against_their_published_checksums(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = tmp_path / CANONICAL_FILES[("raft", "small")]  # the canonical name, other values
    torch.save(raft_small(weights=None).state_dict(), path)
    options = Options(weights={"raft": path}, raft_arch="small")
    assert published_checksum("raft", "small") == "01064c6d"
    assert published_checksum("dino") is None  # no published checksum: loaded as given
    with pytest.raises(WeightMismatch, match="raft_small_C_T_V2-01064c6d.pth"):
        DynamicDegree.from_options(options)
    unchecked = Options(weights={"raft": path}, raft_arch="small", check_weights=False)
    assert isinstance(DynamicDegree.from_options(unchecked), DynamicDegree)
    # A file whose sha256 carries the expected prefix passes, whatever its name.
    prefix = sha256_of(str(path))[:8]
    monkeypatch.setitem(CANONICAL_FILES, ("raft", "small"), f"raft_small-{prefix}.pth")
    assert weight_path(options, "raft", "small") == str(path)
    with pytest.raises(MetricUnavailable, match="dino_vitbase16_pretrain.pth"):
        weight_path(options, "dino")


def test_cli_writes_strict_json_and_keeps_non_finite_scores_named(video_dirs, tmp_path):
    videos, reference = video_dirs
    out = tmp_path / "scores.json"
    argv = ["--videos", str(videos), "--reference", str(reference), "--metrics", "psnr", "ssim"]
    cli.main([*argv, "--out", str(out)])
    report = strict_json(out)
    assert report["metrics"]["psnr"]["non_finite"]["mean"] == "inf"
    assert "non_finite" not in report["metrics"]["ssim"]
    assert "| psnr | inf |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "psnr", "temporal_flickering"], "--metrics psnr cannot run: needs --reference"),
        (["--metrics", "lpips"], "lpips=PATH"),
        (["--metrics", "clip_score"], "--prompts"),
        (["--weights", "dino"], "--weights expects KEY=PATH"),
    ],
    ids=["no-reference", "no-weights", "no-prompts", "bad-weights"],
)
def test_cli_exits_2_naming_what_a_requested_metric_misses(
    video_dirs, tmp_path, capsys, extra, message
):
    videos, _ = video_dirs
    out = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--videos", str(videos), *extra, "--out", str(out)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing scored, nothing written


def test_cli_rejects_unknown_metrics_and_unpublished_weights(video_dirs, tmp_path, capsys):
    videos, reference = video_dirs
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--videos", str(videos), "--metrics", "fvd", "--out", str(tmp_path / "a.json")])
    assert exit_info.value.code == 2 and "invalid choice: 'fvd'" in capsys.readouterr().err
    torch.manual_seed(0)
    features = alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "alex.pth")
    argv = ["--videos", str(videos), "--reference", str(reference), "--metrics", "lpips"]
    argv += ["--weights", f"lpips={tmp_path / 'alex.pth'}", "--out", str(tmp_path / "b.json")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and "--no-weight-check" in capsys.readouterr().err
    cli.main([*argv, "--no-weight-check"])
    assert strict_json(tmp_path / "b.json")["settings"]["weight_check"] is False


def test_cli_records_where_the_videos_came_from(video_dirs, tmp_path):
    """``settings.json`` beside the videos (as vmoba.sample writes it) is recorded whole, its
    prompts are the videos' prompts, and the command and commit are in the report."""
    videos, reference = video_dirs
    generation = {
        "checkpoint": "runs/default/checkpoints/last.ckpt",
        "scheduler": "FlowUniPCMultistepScheduler",
        "steps": 50,
        "seed": 7,
        "videos": [
            {"file": "a_static.mp4", "prompt": "a still scene"},
            {"file": "b_moving.mp4", "prompt": "a moving scene"},
        ],
    }
    (videos / "settings.json").write_text(json.dumps(generation))
    out = tmp_path / "scores.json"
    argv = ["--videos", str(videos), "--reference", str(reference), "--metrics", "ssim"]
    cli.main([*argv, "--out", str(out)])
    report = strict_json(out)
    assert report["generation"] == generation
    assert report["reference_generation"] is None
    assert report["prompts"] == {"a_static.mp4": "a still scene", "b_moving.mp4": "a moving scene"}
    assert report["command"] == "python -m eval.run " + " ".join([*argv, "--out", str(out)])
    assert report["commit"]
