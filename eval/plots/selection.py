"""Heatmaps of the selected (query, block) pairs, one panel per layer kind: on a toy video grid,
or in a trained model's layers.

    python -m eval.plots.selection --out eval/results/selection_toy.png
    python -m eval.plots.selection --select topk --scope query_head --topk 2 --out topk.png
    python -m eval.plots.selection --checkpoint runs/default/checkpoints/last.ckpt --out trained.png

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
    BlockPartition,
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


COLOURS = ListedColormap(["#1b1b2f", "#f4a259", "#5b8e7d"])  # dropped, selected, self block


def draw_selection(ax, partition: BlockPartition, keep: torch.Tensor, title: str) -> None:
    """Heatmap of one head's keep mask ``[S, N]``: rows are queries grouped by their own block."""
    picture = keep.cpu().int() + self_block_mask(partition).int()  # 0, 1 (selected) or 2 (self)
    ax.imshow(picture[partition.perm].numpy(), aspect="auto", interpolation="nearest",
              cmap=COLOURS, vmin=0, vmax=2)
    ax.set_title(title)
    ax.set_xlabel("key block")
    ax.set_xticks(np.arange(partition.num_blocks))
    ax.set_ylabel(f"query, grouped by block (grid {partition.grid})")


def save_figure(fig, out: Path, title: str) -> None:
    fig.suptitle(f"{title} (green: self block, orange: selected)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_toy(config: SelectionConfig, out: Path, seed: int = 0) -> None:
    """One panel per layer kind on smooth toy tokens."""
    q = smooth_tokens(GRID, 1, 32, seed)
    k = smooth_tokens(GRID, 1, 32, seed + 1)
    fig, axes = plt.subplots(1, len(BLOCKS), figsize=(4 * len(BLOCKS), 6), constrained_layout=True)
    for ax, (kind, block) in zip(axes, BLOCKS.items()):
        part, keep = vmoba_selection(q, k, grid=GRID, block=block, config=config)
        density = kept_density(keep, part).item()
        draw_selection(ax, part, keep[0, 0], f"{kind} block {block}: {part.num_blocks} blocks\n"
                       f"density {density:.2f}")
    rule = f"topk k={config.topk}" if config.select == "topk" else f"threshold tau={config.threshold}"
    save_figure(fig, out, f"VMoBA selection, {rule}, scope {config.scope}")


@torch.no_grad()
def plot_checkpoint(checkpoint: Path, out: Path, caption: str, t: float, head: int, seed: int) -> None:
    """One panel per layer kind (its first layer) of a trained model, on a noisy input at
    noise level ``t`` shaped like its training clips."""
    from vmoba.sample import load_for_sampling

    model, clip = load_for_sampling(checkpoint)
    shape = (1, *clip)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    first = {}
    for index, processor in enumerate(model.dit.processors):
        processor.record_selection = True
        first.setdefault(processor.kind, index)
    model.dit(noise, torch.tensor([1000.0 * t]), model.text_encoder([caption]))
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 6), constrained_layout=True)
    for ax, (kind, index) in zip(np.atleast_1d(axes), first.items()):
        part, keep = model.dit.processors[index].selection_record
        density = kept_density(keep, part).item()
        draw_selection(ax, part, keep[0, head], f"layer {index} ({kind}), head {head}: "
                       f"{part.num_blocks} blocks\ndensity {density:.2f}")
    save_figure(fig, out, f"{checkpoint.name}: '{caption}', t = {t}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--select", default="threshold", choices=["topk", "threshold"])
    parser.add_argument("--scope", default="head_global")
    parser.add_argument("--threshold", type=float, default=0.25)
    parser.add_argument("--topk", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("eval/results/selection_toy.png"))
    parser.add_argument("--checkpoint", type=Path, help="a trained model's .ckpt instead of toy tokens")
    parser.add_argument("--caption", default="a red circle moving left")
    parser.add_argument("--t", type=float, default=0.5, help="noise level of the input (0..1)")
    parser.add_argument("--head", type=int, default=0)
    args = parser.parse_args()
    if args.checkpoint is None:
        config = SelectionConfig(args.select, args.scope, args.threshold, args.topk)
        plot_toy(config, args.out, args.seed)
    else:
        plot_checkpoint(args.checkpoint, args.out, args.caption, args.t, args.head, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
