"""Speedup of VMoBA over dense cuDNN attention against sequence length, from a benchmark JSON.

python -m eval.plots.speedup eval/results/attention_h200.json --out eval/results/attention_h200_speedup.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(records: list[dict], out: Path) -> None:
    """One line per (backend, layer kind) and the layer-cycle total, forward and forward+backward."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True, sharey=True)
    for ax, (key, dense_key, title) in zip(
        axes,
        [
            ("fwd_ms", "dense_cudnn_fwd_ms", "forward"),
            ("fwd_bwd_ms", "dense_cudnn_fwd_bwd_ms", "forward + backward"),
        ],
    ):
        for style, backend in zip(("-", "--", ":", "-."), sorted({r["backend"] for r in records})):
            rows = [r for r in records if r["backend"] == backend]
            for kind in ("1d", "2d", "3d"):
                per = {r["tokens"]: r[dense_key] / r[key] for r in rows if r["layer_kind"] == kind}
                lengths = sorted(per)
                ax.plot(lengths, [per[n] for n in lengths], marker="o", alpha=0.6,
                        linestyle=style, label=f"{backend} {kind}")
            # the cycle only where all three kinds were measured
            full = sorted(n for n in {r["tokens"] for r in rows}
                          if sum(r["tokens"] == n for r in rows) == 3)
            cycle = [
                sum(r[dense_key] for r in rows if r["tokens"] == n)
                / sum(r[key] for r in rows if r["tokens"] == n)
                for n in full
            ]
            ax.plot(full, cycle, marker="s", linewidth=2.5, color="black", linestyle=style,
                    label=f"{backend} 1D+2D+3D cycle")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{title}: dense cuDNN time / VMoBA time")
        ax.set_xlabel("video tokens")
    axes[0].set_ylabel("speedup (x)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"VMoBA vs dense cuDNN SDPA, {records[0]['device']}, bf16, H=12, D=128, B=1")
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("eval/results/attention_h200_speedup.png"))
    args = parser.parse_args()
    plot(json.loads(args.results.read_text()), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
