"""Launch shapes of the ``indexed`` backend's kernels, timed on one setting of the sweep.

    python -m eval.tune_indexed --tokens 55296 --kind 2d

The selection is computed once; each shape then times the attention alone (no gates or
selection), forward and forward+backward, beside FA2-varlen's ``varlen`` backend on the same
selection. Prints one JSON line per shape, fastest forward+backward last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import replace

import torch
from triton.testing import do_bench

from eval.bench_attention import SETTINGS
from vmoba.attention import SelectionConfig, indexed, vmoba_selection
from vmoba.attention.indexed import Loop
from vmoba.attention.varlen import varlen_attention

BASE = indexed.Tiles()
SHAPES = [  # one kernel's launch changed at a time (the forward's, dk/dv's or dq's)
    BASE,
    replace(BASE, forward=Loop(32, 4, 3)),
    replace(BASE, forward=Loop(128, 8, 2)),
    replace(BASE, query_tile=128, forward=Loop(64, 8, 3), dq=Loop(64, 8, 3)),
    replace(BASE, dkdv=Loop(32, 4, 2)),
    replace(BASE, dkdv=Loop(64, 4, 3)),
    replace(BASE, dkdv=Loop(128, 8, 2)),
    replace(BASE, key_tile=128, dkdv=Loop(64, 8, 2)),
    replace(BASE, dq=Loop(32, 4, 3)),
    replace(BASE, dq=Loop(128, 4, 2)),
    replace(BASE, dq=Loop(64, 8, 3)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, choices=[s.tokens for s in SETTINGS], default=55_296)
    parser.add_argument("--kind", choices=("1d", "2d", "3d"), default="2d")
    args = parser.parse_args()
    setting = next(s for s in SETTINGS if s.tokens == args.tokens)
    topk = None if setting.topk is None else setting.topk[args.kind]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, setting.tokens, 12, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
        .requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn_like(q)
    config = SelectionConfig(setting.select, setting.scope, setting.threshold, topk)
    partition, keep = vmoba_selection(
        q, k, grid=setting.grid, block=setting.blocks[args.kind], config=config
    )

    def timed(attend) -> dict[str, float]:
        return {
            "fwd_ms": do_bench(attend, warmup=20, rep=100, return_mode="median"),
            "fwd_bwd_ms": do_bench(
                lambda: attend().backward(grad), warmup=20, rep=100, grad_to_none=[q, k, v],
                return_mode="median",
            ),
        }

    base = {"tokens": args.tokens, "kind": args.kind}
    print(json.dumps({**base, "backend": "varlen", **timed(
        lambda: varlen_attention(q, k, v, keep, partition))}), flush=True)
    results = []
    for tiles in SHAPES:
        indexed.TILES = tiles
        record = {**base, "backend": "indexed", **dataclasses.asdict(indexed.TILES)}
        try:
            record.update(timed(lambda: indexed.indexed_attention(q, k, v, keep, partition)))
        except Exception as error:  # a shape that does not compile (shared memory, registers)
            record["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        results.append(record)
        print(json.dumps(record), flush=True)
    best = min((r for r in results if "error" not in r), key=lambda r: r["fwd_bwd_ms"])
    print(json.dumps({"best": best}))


if __name__ == "__main__":
    main()
