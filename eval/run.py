r"""Score generated videos with the metrics of eval.metrics; write JSON and a markdown table.

    python -m eval.run --videos DIR [--reference DIR] [--prompts FILE] \
        [--metrics NAME ...] [--weights KEY=PATH ...] [--no-weight-check] --out FILE.json

Every ``*.mp4`` in DIR is scored (sorted by filename). Without ``--metrics`` every metric runs and
those whose weights or inputs are missing are reported as unavailable with the reason; a metric
named in ``--metrics`` that cannot run is an error (exit 2, before anything is scored). Nothing is
downloaded.

The JSON is strict (RFC 8259): a non-finite score (PSNR of identical videos) is written as
``null`` and listed under the metric's ``non_finite``. It records where the videos came from:
``vmoba.sample``'s ``settings.json`` beside the videos (checkpoint, sampler, steps, guidance,
seed, prompts) and beside the reference, and the prompt of every video. Without ``--prompts`` the
prompts of that ``settings.json`` are used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

from data.video_io import SETTINGS_FILE, read_sample_settings
from eval.metrics import (
    METRICS,
    Metric,
    MetricUnavailable,
    Options,
    get_metric,
    missing_inputs,
)
from eval.metrics.video import read_prompts, read_sample
from eval.metrics.weights import WEIGHT_FILES, WeightMismatch
from eval.results_io import checkout_commit

class RunError(Exception):
    """A problem with the command's inputs; :func:`main` prints it on one line and exits 2."""


def parse_weights(items: list[str]) -> dict[str, Path]:
    """``["KEY=PATH", ...]`` -> {key: path}; keys must be known and files must exist.

    Raises:
        RunError: an item is not ``KEY=PATH`` with a known key, or its file does not exist.
    """
    weights = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or key not in WEIGHT_FILES:
            raise RunError(
                f"--weights expects KEY=PATH with KEY in {sorted(WEIGHT_FILES)}, got {item!r}"
            )
        if not Path(path).is_file():
            raise RunError(f"--weights {key}={path}: no such file ({WEIGHT_FILES[key]})")
        weights[key] = Path(path)
    return weights


def build_metrics(
    names: list[str], options: Options, has_reference: bool, has_prompts: bool
) -> tuple[dict[str, Metric], dict[str, str]]:
    """Metrics that can run, by name, and the reasons the others cannot.

    Raises:
        WeightMismatch: a weights file is not the published one (and checking is on).
    """
    ready, unavailable = {}, {}
    for name in names:
        cls = get_metric(name)
        reason = missing_inputs(cls, options.weights, has_reference, has_prompts)
        if reason is None:
            try:
                ready[name] = cls.from_options(options)
            except MetricUnavailable as error:
                reason = str(error)
        if reason is not None:
            unavailable[name] = reason
    return ready, unavailable


def evaluate(
    videos: list[Path],
    metrics: dict[str, Metric],
    reference_dir: Path | None,
    prompts: dict[str, str] | None,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """``{metric: {filename: score}}``, decoding each video (and its reference) once, and the
    videos skipped because they (or their references) could not be read, with the reason. One
    line of progress per video."""
    scores: dict[str, dict[str, float]] = {name: {} for name in metrics}
    skipped: dict[str, str] = {}
    if not metrics:
        return scores, skipped
    for i, path in enumerate(videos, 1):
        start = time.perf_counter()
        try:
            sample = read_sample(path, reference_dir, prompts[path.name] if prompts else None)
        except Exception as error:  # a corrupt file: skipped and reported, as training does
            skipped[path.name] = f"{type(error).__name__}: {error}"
            warnings.warn(f"skipping unreadable video {path}: {skipped[path.name]}")
            continue
        for name, metric in metrics.items():
            scores[name][path.name] = metric(sample)
        print(f"[{i}/{len(videos)}] {path.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return scores, skipped


def metric_result(per_video: dict[str, float]) -> dict:
    """One metric's JSON entry: ``mean`` over the videos and ``per_video``, non-finite values as
    ``null`` with their text (``"inf"``, ``"nan"``) under ``non_finite`` (key ``mean`` for the
    mean)."""
    values = {**per_video, "mean": math.fsum(per_video.values()) / len(per_video)}
    non_finite = {key: str(value) for key, value in values.items() if not math.isfinite(value)}
    finite = {key: value if math.isfinite(value) else None for key, value in values.items()}
    result = {"mean": finite.pop("mean"), "per_video": finite}
    if non_finite:
        result["non_finite"] = non_finite
    return result


def _cell(result: dict, key: str) -> str:
    """A score of a metric entry for the markdown table (``inf`` for a non-finite one)."""
    value = result["mean"] if key == "mean" else result["per_video"][key]
    return result["non_finite"][key] if value is None else f"{value:.4f}"


def markdown(report: dict) -> str:
    """The report as markdown: one row per metric (mean or why unavailable), then per video."""
    lines = ["| metric | mean | note |", "|---|---|---|"]
    available = []
    for name, result in report["metrics"].items():
        if "per_video" in result:
            available.append(name)
            lines.append(f"| {name} | {_cell(result, 'mean')} | |")
        else:
            lines.append(f"| {name} | - | unavailable: {result['unavailable']} |")
    if available:
        lines += [
            "",
            "| video | " + " | ".join(available) + " |",
            "|---" * (len(available) + 1) + "|",
        ]
        for video in report["videos"]:
            row = [_cell(report["metrics"][name], video) for name in available]
            lines.append(f"| {video} | " + " | ".join(row) + " |")
    for video, reason in report.get("skipped", {}).items():
        lines.append(f"\nSkipped, unreadable: {video} ({reason})")
    return "\n".join(lines) + "\n"


def generation_prompts(generation: dict | None, names: list[str]) -> dict[str, str] | None:
    """``{video: prompt}`` from a ``settings.json``'s ``videos`` list, if it has every video."""
    listed = {v["file"]: v["prompt"] for v in (generation or {}).get("videos", [])}
    return {name: listed[name] for name in names} if set(names) <= set(listed) else None


def _inputs(args: argparse.Namespace) -> tuple[list[Path], Path | None, dict[str, str] | None]:
    """The videos, the reference folder and the prompts of the command line, checked."""
    video_dir = Path(args.videos)
    videos = sorted(video_dir.glob("*.mp4"))
    if not videos:
        raise RunError(f"--videos {video_dir}: no *.mp4 files")
    names = [p.name for p in videos]
    reference_dir = Path(args.reference) if args.reference else None
    if reference_dir is not None:
        absent = [name for name in names if not (reference_dir / name).is_file()]
        if absent:
            raise RunError(f"--reference {reference_dir}: missing {absent}")
    if args.prompts:
        try:
            prompts = read_prompts(args.prompts, names)
        except (OSError, ValueError) as error:
            raise RunError(str(error)) from error
    else:
        prompts = generation_prompts(read_sample_settings(video_dir), names)
    return videos, reference_dir, prompts


def run(argv: list[str]) -> dict:
    """Score the videos of the command line ``argv`` (``python -m eval.run``'s arguments); writes
    ``--out`` and its ``.md`` and returns the report.

    Raises:
        RunError: bad inputs, a metric named in ``--metrics`` that cannot run, weights that are
            not the published files, or no readable video.
    """
    args = parser().parse_args(argv)
    videos, reference_dir, prompts = _inputs(args)
    options = Options(
        clip_model=args.clip_model,
        lpips_net=args.lpips_net,
        raft_arch=args.raft_arch,
        device=args.device,
        weights=parse_weights(args.weights),
        check_weights=args.weight_check,
    )
    metric_names = args.metrics or list(METRICS)
    try:
        ready, unavailable = build_metrics(
            metric_names, options, reference_dir is not None, prompts is not None
        )
    except WeightMismatch as error:
        raise RunError(str(error)) from error
    if args.metrics and unavailable:
        raise RunError(
            "; ".join(f"--metrics {name} cannot run: {why}" for name, why in unavailable.items())
        )
    scores, skipped = evaluate(videos, ready, reference_dir, prompts)
    if ready and len(skipped) == len(videos):
        raise RunError(f"--videos {args.videos}: no readable video ({skipped})")
    results = {
        name: metric_result(scores[name]) if name in ready else {"unavailable": unavailable[name]}
        for name in metric_names
    }
    kept = [p.name for p in videos if p.name not in skipped]
    report = {
        "metrics": results,
        "videos": kept,
        "skipped": skipped,
        "prompts": None if prompts is None else {name: prompts[name] for name in kept},
        "generation": read_sample_settings(Path(args.videos)),
        "reference_generation": read_sample_settings(reference_dir) if reference_dir else None,
        "settings": {
            "videos": str(args.videos),
            "reference": str(reference_dir) if reference_dir else None,
            "prompts": str(args.prompts) if args.prompts else None,
            "weights": {key: str(path) for key, path in options.weights.items()},
            "weight_check": options.check_weights,
            "clip_model": options.clip_model,
            "lpips_net": options.lpips_net,
            "raft_arch": options.raft_arch,
            "device": options.device,
        },
        "command": "python -m eval.run " + " ".join(argv),
        "commit": checkout_commit(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m eval.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--videos", required=True, help="directory of *.mp4 videos to score")
    p.add_argument("--reference", help="directory of same-named reference (full-attention) videos")
    p.add_argument(
        "--prompts",
        help="prompts: .json {file: prompt}, .csv filename,prompt, or one per line "
        f"(default: those of {SETTINGS_FILE} beside the videos, if any)",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=list(METRICS),
        metavar="NAME",
        help=f"metrics to compute, each must run (default: all that can): {', '.join(METRICS)}",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="KEY=PATH",
        help="local weight files: " + "; ".join(f"{k}: {v}" for k, v in WEIGHT_FILES.items()),
    )
    p.add_argument(
        "--no-weight-check",
        dest="weight_check",
        action="store_false",
        help="load weights whose sha256 is not the published file's (e.g. fine-tuned ones)",
    )
    p.add_argument(
        "--clip-model", default="ViT-B-32-quickgelu", help="open_clip model name for --weights clip"
    )
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"], help="LPIPS backbone")
    p.add_argument("--raft-arch", default="large", choices=["large", "small"], help="RAFT variant")
    p.add_argument("--device", default="cpu", help="torch device for the models")
    p.add_argument(
        "--out", required=True, help="output JSON path; the markdown table goes beside it (.md)"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; an input problem prints ``error: ...`` on stderr and exits with status 2."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
