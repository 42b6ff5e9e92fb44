"""CPU speed and memory of the CPU backends, forward + backward, for each layer kind.

    python -m eval.bench.attention_cpu --out eval/results/attention_cpu.json

Each (backend, layer kind) runs in a fresh process so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import multiprocessing
import platform
import resource
import time
from pathlib import Path

import torch

from eval.results_io import checkout_commit
from vmoba.attention import VMoBAConfig, kept_density, vmoba_attention, vmoba_selection

GRID = (16, 32, 32)  # S = 16,384
BLOCKS = {"1d": 2, "2d": (8, 8), "3d": (4, 16, 16)}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _measure(backend: str, kind: str, heads: int, dim: int, queue: multiprocessing.Queue) -> None:
    torch.manual_seed(0)
    tokens = GRID[0] * GRID[1] * GRID[2]
    q, k, v = (torch.randn(1, tokens, heads, dim, requires_grad=True) for _ in range(3))
    # the paper's trained setting: threshold + head_global, tau 0.25
    config = VMoBAConfig(block=BLOCKS[kind], backend=backend)
    part, keep = vmoba_selection(q, k, grid=GRID, block=config.block, config=config)
    rss_before = _peak_rss_gib()
    start = time.perf_counter()
    out = vmoba_attention(q, k, v, grid=GRID, config=config)
    forward = time.perf_counter() - start
    out.backward(torch.randn_like(out))
    total = time.perf_counter() - start
    queue.put(
        dict(
            backend=backend,
            tokens=tokens,
            heads=heads,
            dim=dim,
            layer_kind=kind,
            blocks=part.num_blocks,
            select=config.select,
            scope=config.scope,
            threshold=config.threshold,
            density=round(kept_density(keep, part).item(), 4),
            fwd_s=round(forward, 2),
            fwd_bwd_s=round(total, 2),
            peak_rss_gib=round(_peak_rss_gib(), 3),
            peak_rss_increase_gib=round(_peak_rss_gib() - rss_before, 3),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["gathered"])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("eval/results/attention_cpu.json"))
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    records = []
    for backend, kind in itertools.product(args.backends, BLOCKS):
        queue = context.Queue()
        proc = context.Process(target=_measure, args=(backend, kind, args.heads, args.dim, queue))
        proc.start()
        record = queue.get()
        proc.join()
        record.update(
            threads=torch.get_num_threads(),
            machine=platform.processor() or platform.machine(),
            torch=torch.__version__,
            date=datetime.date.today().isoformat(),
            commit=checkout_commit(),
        )
        records.append(record)
        print(json.dumps(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
