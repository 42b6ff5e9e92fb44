"""eval.compare: paired differences against a baseline, their bootstrap interval, and the refusal
to compare reports that are not pairs."""

import json

import numpy as np
import pytest
from helpers import strict_json

from eval import compare as cli


def _report(scores: dict[str, dict[str, float | None]], prompts=None, seed=None) -> dict:
    """A minimal eval.run report: ``{metric: {video: score}}``."""
    videos = sorted(next(iter(scores.values())))
    return {
        "metrics": {name: {"per_video": per_video} for name, per_video in scores.items()},
        "videos": videos,
        "prompts": prompts,
        "generation": None if seed is None else {"seed": seed},
    }


def _run(tmp_path, ours: dict, baseline: dict, *extra: str) -> dict:
    """Write both reports and run the CLI on them."""
    for name, report in (("ours", ours), ("baseline", baseline)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    argv = ["--ours", str(tmp_path / "ours.json"), "--baseline", str(tmp_path / "baseline.json")]
    return cli.main([*argv, "--out", str(tmp_path / "cmp.json"), *extra])


def test_a_constant_shift_is_the_difference_and_the_whole_interval(tmp_path):
    base = {f"v{i}.mp4": 0.5 + 0.01 * i for i in range(6)}
    ours = {video: score + 0.1 for video, score in base.items()}
    result = _run(tmp_path, _report({"ssim": ours}), _report({"ssim": base}))["metrics"]["ssim"]
    assert result["difference"] == pytest.approx(0.1)
    assert result["low"] == pytest.approx(0.1) and result["high"] == pytest.approx(0.1)
    assert result["pairs"] == 6 and result["better"] == "higher"
    assert result["ours_mean"] - result["baseline_mean"] == pytest.approx(0.1)


def test_pairs_are_matched_by_video_not_by_position(tmp_path):
    """Ours lists its videos in another order: a positional pairing would see differences."""
    base = {"a.mp4": 0.1, "b.mp4": 0.9, "c.mp4": 0.5}
    ours = {"c.mp4": 0.5, "b.mp4": 0.9, "a.mp4": 0.1}
    report = _report({"ssim": ours})
    report["videos"] = ["c.mp4", "b.mp4", "a.mp4"]
    result = _run(tmp_path, report, _report({"ssim": base}))["metrics"]["ssim"]
    assert result["difference"] == 0.0 and result["low"] == 0.0 and result["high"] == 0.0


def test_bootstrap_interval_covers_the_mean_with_the_normal_width():
    """200 pairs, differences ~ N(0.3, 1): the 95% interval is about mean +- 1.96 sd / sqrt(n)."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=200)
    diffs = 0.3 + rng.normal(size=200)
    r = cli.paired_difference(list(base + diffs), list(base), resamples=20_000, seed=0, level=0.95)
    half_width = 1.96 * diffs.std(ddof=1) / np.sqrt(200)
    assert r["difference"] == pytest.approx(diffs.mean())
    assert r["low"] < diffs.mean() < r["high"]
    assert (r["high"] - r["low"]) / 2 == pytest.approx(half_width, rel=0.05)
    narrow = cli.paired_difference(list(base + diffs), list(base), 20_000, seed=0, level=0.5)
    assert r["low"] < narrow["low"] < narrow["high"] < r["high"]


def test_non_finite_scores_are_excluded_and_named(tmp_path):
    ours = {"a.mp4": None, "b.mp4": 30.0, "c.mp4": 20.0}  # a: identical to its reference
    base = {"a.mp4": 25.0, "b.mp4": 28.0, "c.mp4": 21.0}
    result = _run(tmp_path, _report({"psnr": ours}), _report({"psnr": base}))["metrics"]["psnr"]
    assert result["excluded"] == ["a.mp4"] and result["pairs"] == 2
    assert result["difference"] == pytest.approx(0.5)


def test_writes_strict_json_markdown_and_plot(tmp_path):
    ours = _report({"ssim": {"a.mp4": 0.8, "b.mp4": 0.7}, "lpips": {"a.mp4": 0.2, "b.mp4": 0.3}})
    base = _report({"ssim": {"a.mp4": 0.9, "b.mp4": 0.6}, "lpips": {"a.mp4": 0.1, "b.mp4": 0.1}})
    _run(tmp_path, ours, base, "--resamples", "500")
    report = strict_json(tmp_path / "cmp.json")
    assert report["metrics"]["lpips"]["better"] == "lower" and report["resamples"] == 500
    assert report["command"].startswith("python -m eval.compare --ours")
    table = (tmp_path / "cmp.md").read_text()
    assert "| lpips | lower | 2 | 0.2500 | 0.1000 | +0.1500 |" in table
    assert (tmp_path / "cmp.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "ours, message",
    [
        (_report({"ssim": {"a.mp4": 1.0}}), "only in baseline ['b.mp4']"),
        (_report({"ssim": {"a.mp4": 1.0, "b.mp4": 1.0}}, {"a.mp4": "x", "b.mp4": "z"}),
         "different prompts for ['b.mp4']"),
        (_report({"ssim": {"a.mp4": 1.0, "b.mp4": 1.0}}, seed=1), "different sampling seeds"),
    ],
    ids=["videos", "prompts", "seed"],
)
def test_reports_that_are_not_pairs_exit_2(tmp_path, capsys, ours, message):
    base = _report({"ssim": {"a.mp4": 1.0, "b.mp4": 1.0}}, {"a.mp4": "x", "b.mp4": "y"}, seed=0)
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, ours, base)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cmp.json").exists()
