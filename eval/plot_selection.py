"""Heatmaps of the selected (query, block) pairs on a toy video grid, one panel per layer kind.

    python -m eval.plot_selection --out eval/results/selection_toy.png
    python -m eval.plot_selection --select topk --scope query_head --topk 2 --out topk.png

Toy queries and keys are smooth random fields over (t, h, w) plus noise, so nearby tokens look
alike, as in a real video, and the gates prefer nearby blocks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from vmoba.attention import (  # noqa: E402
    SelectionConfig,
    kept_density,
    self_block_mask,
    vmoba_selection,
)

GRID = (8, 12, 12)
BLOCKS = {"1d": 1, "2d": (4, 4), "3d": (4, 6, 6)}


def smooth_tokens(grid: tuple[int, int, int], heads: int, dim: int, seed: int) -> torch.Tensor:
    """``[1, S, H, D]`` tokens that vary smoothly over the grid (random Fourier features + noise)."""
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(0, 1, n) for n in grid]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # [S, 3]
    freqs = torch.randn(3, heads * dim, generator=gen) * 3.0
    phase = torch.rand(heads * dim, generator=gen) * 2 * torch.pi
    fields = torch.cos(pos @ freqs + phase) + 0.3 * torch.randn(
        pos.shape[0], heads * dim, generator=gen
    )
    return fields.reshape(1, -1, heads, dim)


def plot(config: SelectionConfig, out: Path, seed: int = 0) -> None:
    """Save one panel per layer kind: rows are queries grouped by their own block, columns blocks."""
    q = smooth_tokens(GRID, 1, 32, seed)
    k = smooth_tokens(GRID, 1, 32, seed + 1)
    fig, axes = plt.subplots(1, len(BLOCKS), figsize=(4 * len(BLOCKS), 6), constrained_layout=True)
    colours = ListedColormap(["#1b1b2f", "#f4a259", "#5b8e7d"])  # dropped, selected, self block
    for ax, (kind, block) in zip(axes, BLOCKS.items()):
        part, keep = vmoba_selection(q, k, grid=GRID, block=block, config=config)
        picture = keep[0, 0].int() + self_block_mask(part).int()  # 0, 1 (selected) or 2 (self)
        picture = picture[part.perm]
        ax.imshow(
            picture.numpy(), aspect="auto", interpolation="nearest", cmap=colours, vmin=0, vmax=2
        )
        ax.set_title(
            f"{kind} block {block}: {part.num_blocks} blocks\n"
            f"density {kept_density(keep, part).item():.2f}"
        )
        ax.set_xlabel("key block")
        ax.set_xticks(np.arange(part.num_blocks))
        ax.set_ylabel(f"query, grouped by block (grid {GRID})")
    rule = (
        f"topk k={config.topk}" if config.select == "topk" else f"threshold tau={config.threshold}"
    )
    fig.suptitle(
        f"VMoBA selection, {rule}, scope {config.scope} (green: self block, orange: selected)"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--select", default="threshold", choices=["topk", "threshold"])
    parser.add_argument("--scope", default="head_global")
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--topk", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("eval/results/selection_toy.png"))
    args = parser.parse_args()
    config = SelectionConfig(args.select, args.scope, args.threshold, args.topk)
    plot(config, args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
