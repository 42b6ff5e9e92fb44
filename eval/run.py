r"""Score generated videos with the metrics of eval.metrics; write JSON and a markdown table.

    python -m eval.run --videos DIR [--reference DIR] [--prompts FILE] \
        [--metrics NAME ...] [--weights KEY=PATH ...] --out FILE.json

Every ``*.mp4`` in DIR is scored (sorted by filename). Metrics whose weights or inputs are
missing are reported as unavailable with the reason; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

from eval.metrics import (
    METRICS,
    Metric,
    MetricUnavailable,
    Options,
    Sample,
    get_metric,
    missing_inputs,
)
from eval.metrics.video import read_prompts, read_video
from eval.metrics.weights import WEIGHT_FILES


def parse_weights(items: list[str]) -> dict[str, Path]:
    """``["KEY=PATH", ...]`` -> {key: path}; keys must be known and files must exist."""
    weights = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or key not in WEIGHT_FILES:
            raise ValueError(
                f"--weights expects KEY=PATH with KEY in {sorted(WEIGHT_FILES)}, got {item!r}"
            )
        if not Path(path).is_file():
            raise FileNotFoundError(f"--weights {key}={path}: no such file ({WEIGHT_FILES[key]})")
        weights[key] = Path(path)
    return weights


def build_metrics(
    names: list[str], options: Options, has_reference: bool, has_prompts: bool
) -> tuple[dict[str, Metric], dict[str, str]]:
    """Metrics that can run, by name, and the reasons the others cannot."""
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
            frames, fps = read_video(path)
            reference = read_video(reference_dir / path.name)[0] if reference_dir else None
        except Exception as error:  # a corrupt file: skipped and reported, as training does
            skipped[path.name] = f"{type(error).__name__}: {error}"
            warnings.warn(f"skipping unreadable video {path}: {skipped[path.name]}")
            continue
        prompt = prompts[path.name] if prompts else None
        sample = Sample(frames=frames, fps=fps, reference=reference, prompt=prompt)
        for name, metric in metrics.items():
            scores[name][path.name] = metric(sample)
        print(f"[{i}/{len(videos)}] {path.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return scores, skipped


def markdown(report: dict) -> str:
    """The report as markdown: one row per metric (mean or why unavailable), then per video."""
    lines = ["| metric | mean | note |", "|---|---|---|"]
    available = []
    for name, result in report["metrics"].items():
        if "mean" in result:
            available.append(name)
            lines.append(f"| {name} | {result['mean']:.4f} | |")
        else:
            lines.append(f"| {name} | - | unavailable: {result['unavailable']} |")
    if available:
        lines += [
            "",
            "| video | " + " | ".join(available) + " |",
            "|---" * (len(available) + 1) + "|",
        ]
        for video in report["videos"]:
            row = [f"{report['metrics'][name]['per_video'][video]:.4f}" for name in available]
            lines.append(f"| {video} | " + " | ".join(row) + " |")
    for video, reason in report.get("skipped", {}).items():
        lines.append(f"\nSkipped, unreadable: {video} ({reason})")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    """Score the videos as the CLI does; writes ``args.out`` and its ``.md`` and returns the report."""
    video_dir = Path(args.videos)
    videos = sorted(video_dir.glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"--videos {video_dir}: no *.mp4 files")
    names = [p.name for p in videos]
    reference_dir = Path(args.reference) if args.reference else None
    if reference_dir is not None:
        absent = [name for name in names if not (reference_dir / name).is_file()]
        if absent:
            raise FileNotFoundError(f"--reference {reference_dir}: missing {absent}")
    prompts = read_prompts(args.prompts, names) if args.prompts else None
    options = Options(
        clip_model=args.clip_model,
        lpips_net=args.lpips_net,
        raft_arch=args.raft_arch,
        device=args.device,
        weights=parse_weights(args.weights),
    )
    metric_names = args.metrics or list(METRICS)
    ready, unavailable = build_metrics(
        metric_names, options, reference_dir is not None, prompts is not None
    )
    scores, skipped = evaluate(videos, ready, reference_dir, prompts)
    if ready and len(skipped) == len(videos):
        raise RuntimeError(f"--videos {video_dir}: no readable video ({skipped})")
    results = {}
    for name in metric_names:
        if name in unavailable:
            results[name] = {"unavailable": unavailable[name]}
        else:
            per_video = scores[name]
            results[name] = {
                "mean": math.fsum(per_video.values()) / len(per_video),
                "per_video": per_video,
            }
    report = {
        "metrics": results,
        "videos": [name for name in names if name not in skipped],
        "skipped": skipped,
        "settings": {
            "videos": str(video_dir),
            "reference": str(reference_dir) if reference_dir else None,
            "prompts": str(args.prompts) if args.prompts else None,
            "weights": {key: str(path) for key, path in options.weights.items()},
            "clip_model": options.clip_model,
            "lpips_net": options.lpips_net,
            "raft_arch": options.raft_arch,
            "device": options.device,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # PSNR of identical videos is inf, written as JSON's common extension ``Infinity``.
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return report


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--videos", required=True, help="directory of *.mp4 videos to score")
    p.add_argument("--reference", help="directory of same-named reference (full-attention) videos")
    p.add_argument(
        "--prompts", help="prompts: .json {file: prompt}, .csv filename,prompt, or one per line"
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        choices=list(METRICS),
        metavar="NAME",
        help=f"metrics to compute (default all): {', '.join(METRICS)}",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="KEY=PATH",
        help="local weight files: " + "; ".join(f"{k}: {v}" for k, v in WEIGHT_FILES.items()),
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
    run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
