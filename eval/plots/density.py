"""Kept density per layer kind over training, from a run directory's ``metrics.csv``.

    python -m eval.plots.density runs/default --out eval/results/density_default.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KINDS = ("1d", "2d", "3d")


def read_densities(metrics_csv: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{kind: (steps, densities)}`` of the rows of Lightning's CSV log that have them."""
    series = {kind: ([], []) for kind in KINDS}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for kind in KINDS:
                value = row.get(f"train/density_{kind}", "")
                if value:
                    series[kind][0].append(int(row["step"]))
                    series[kind][1].append(float(value))
    return {kind: s for kind, s in series.items() if s[0]}


def plot(run_dir: Path, out: Path) -> None:
    series = read_densities(run_dir / "metrics.csv")
    if not series:
        raise ValueError(f"{run_dir / 'metrics.csv'} has no train/density_* columns (a full-attention run?)")
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for kind, (steps, values) in series.items():
        ax.plot(steps, values, marker=".", label=f"{kind} layers")
    ax.set_xlabel("training step")
    ax.set_ylabel("kept density (fraction of query-key pairs)")
    ax.set_ylim(0, 1)
    ax.set_title(f"VMoBA kept density per layer kind: {run_dir}")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("eval/results/density.png"))
    args = parser.parse_args()
    plot(args.run_dir, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
