r"""Paired comparison of two ``eval.run`` reports: ours (e.g. VMoBA) against a baseline (full
attention), video by video over the same prompts and seeds.

    python -m eval.compare --ours vmoba.json --baseline full.json --out compare.json \
        [--resamples 10000 --seed 0 --level 0.95]

Per metric scored in both: the mean of ``ours - baseline`` over the videos both scored with finite
values, and a paired bootstrap interval of that mean (videos resampled with replacement, the
percentile interval at ``--level``). Writes the JSON, a markdown table (``.md``) and a plot
(``.png``) beside ``--out``. The two reports must cover the same videos; where both record
prompts or a sampling seed, those must agree too (otherwise the pairs are not pairs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from eval.results_io import checkout_commit

LOWER_IS_BETTER = frozenset({"lpips"})  # every other metric: higher is better


class PairingError(ValueError):
    """The two reports do not score the same videos from the same prompts and seeds."""


def check_pairing(ours: dict, baseline: dict) -> list[str]:
    """The videos both reports scored, after checking that they are pairs.

    Raises:
        PairingError: the video lists differ, or a video's prompt, or the sampling seed, differs
            where both reports record it.
    """
    if set(ours["videos"]) != set(baseline["videos"]):
        only_ours = sorted(set(ours["videos"]) - set(baseline["videos"]))
        only_base = sorted(set(baseline["videos"]) - set(ours["videos"]))
        raise PairingError(
            f"different videos: only in ours {only_ours}, only in baseline {only_base}"
        )
    if ours.get("prompts") and baseline.get("prompts"):
        differ = [v for v in ours["videos"] if ours["prompts"][v] != baseline["prompts"][v]]
        if differ:
            raise PairingError(f"different prompts for {differ}")
    seeds = [(r.get("generation") or {}).get("seed") for r in (ours, baseline)]
    if None not in seeds and seeds[0] != seeds[1]:
        raise PairingError(f"different sampling seeds: ours {seeds[0]}, baseline {seeds[1]}")
    return list(ours["videos"])


def paired_difference(
    ours: list[float], baseline: list[float], resamples: int, seed: int, level: float
) -> dict:
    """Mean of ``ours - baseline`` and its paired percentile-bootstrap interval.

    Args:
        ours, baseline: per-video scores in the same video order (finite).
        resamples: bootstrap resamples of the videos.
        seed: seed of the resampling (the interval is deterministic given it).
        level: coverage of the interval, e.g. 0.95.

    Returns:
        ``{"pairs", "ours_mean", "baseline_mean", "difference", "low", "high"}``; with one pair
        the interval is the point.
    """
    diffs = np.asarray(ours, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)  # [n]
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {
        "pairs": len(diffs),
        "ours_mean": math.fsum(ours) / len(ours),
        "baseline_mean": math.fsum(baseline) / len(baseline),
        "difference": float(diffs.mean()),
        "low": float(low),
        "high": float(high),
    }


def compare(ours: dict, baseline: dict, resamples: int, seed: int, level: float) -> dict:
    """``{metric: paired_difference(...) + {"excluded": [videos]}}`` for every metric with
    per-video scores in both reports; videos with a non-finite (null) score on either side are
    excluded and listed. A metric with no finite pair is left out."""
    videos = check_pairing(ours, baseline)
    results = {}
    for name, mine in ours["metrics"].items():
        theirs = baseline["metrics"].get(name, {})
        if "per_video" not in mine or "per_video" not in theirs:
            continue
        pairs = [(mine["per_video"][v], theirs["per_video"][v]) for v in videos]
        kept = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not kept:
            continue
        result = paired_difference(*zip(*kept), resamples=resamples, seed=seed, level=level)
        result["excluded"] = [v for v, (a, b) in zip(videos, pairs) if a is None or b is None]
        result["better"] = "lower" if name in LOWER_IS_BETTER else "higher"
        results[name] = result
    return results


def markdown(report: dict) -> str:
    """The comparison as a markdown table, one row per metric."""
    percent = f"{report['level']:.0%}"
    lines = [
        f"Ours `{report['ours']}` vs baseline `{report['baseline']}`: mean of ours - baseline over "
        f"paired videos, {percent} paired bootstrap interval ({report['resamples']} resamples, "
        f"seed {report['seed']}).",
        "",
        f"| metric | better | pairs | ours | baseline | ours - baseline | {percent} interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["metrics"].items():
        lines.append(
            f"| {name} | {r['better']} | {r['pairs']} | {r['ours_mean']:.4f} | "
            f"{r['baseline_mean']:.4f} | {r['difference']:+.4f} | "
            f"[{r['low']:+.4f}, {r['high']:+.4f}] |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """One panel per metric (its own scale): the difference and its interval, a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["metrics"])
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 0.9 * len(names) + 0.8), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        r = report["metrics"][name]
        error = [[r["difference"] - r["low"]], [r["high"] - r["difference"]]]
        ax.errorbar([r["difference"]], [0], xerr=error, fmt="o", capsize=4)
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_yticks([0], [f"{name} ({r['better']} better)"])
    axes[-1, 0].set_xlabel(f"ours - baseline, {report['level']:.0%} paired bootstrap interval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns the report. Reports that are not pairs exit with status 2."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="python -m eval.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ours", type=Path, required=True, help="eval.run JSON of our videos")
    p.add_argument("--baseline", type=Path, required=True, help="eval.run JSON of the baseline's")
    p.add_argument("--out", type=Path, required=True, help="output JSON; .md and .png beside it")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--level", type=float, default=0.95, help="coverage of the interval")
    args = p.parse_args(argv)
    if not 0 < args.level < 1 or args.resamples < 1:
        p.error("--level must be in (0, 1) and --resamples at least 1")
    reports = [json.loads(path.read_text()) for path in (args.ours, args.baseline)]
    try:
        metrics = compare(*reports, resamples=args.resamples, seed=args.seed, level=args.level)
    except PairingError as error:
        print(f"error: {args.ours} and {args.baseline} are not paired: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    report = {
        "metrics": metrics,
        "ours": str(args.ours),
        "baseline": str(args.baseline),
        "resamples": args.resamples,
        "seed": args.seed,
        "level": args.level,
        "ours_generation": reports[0].get("generation"),
        "baseline_generation": reports[1].get("generation"),
        "command": "python -m eval.compare " + " ".join(argv),
        "commit": checkout_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    if metrics:
        plot(report, args.out.with_suffix(".png"))
    print(markdown(report), end="")
    return report


if __name__ == "__main__":
    main()
