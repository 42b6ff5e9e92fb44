"""Launch shapes of the ``indexed`` backend's kernels, timed on one setting of the sweep.

    python -m eval.bench.tune_indexed --tokens 55296 --kind 2d

The selection is computed once; each shape then times the attention alone (no gates or
selection), forward and forward+backward, beside FA2-varlen's ``varlen`` backend on the same
selection. Prints one JSON line per shape, fastest forward+backward last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import replace

from triton.testing import do_bench

from eval.bench.attention import add_layer_arguments, layer_topk, random_inputs, setting_of
from vmoba.attention import SelectionConfig, Tuning, vmoba_selection
from vmoba.attention.indexed import indexed_attention
from vmoba.attention.tuning import Loop, Tiles
from vmoba.attention.varlen import varlen_attention

BASE = Tiles()
SHAPES = [  # Loop(tile, step, warps, stages): the forward's, then dq's, then dk/dv's
    BASE,
    replace(BASE, forward=Loop(64, 32, 4, 3)),
    replace(BASE, forward=Loop(128, 64, 8, 3)),
    replace(BASE, dq=Loop(64, 64, 4, 3)),
    replace(BASE, dq=Loop(128, 64, 8, 3)),
    replace(BASE, dkdv=Loop(64, 32, 4, 3)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_layer_arguments(parser)
    args = parser.parse_args()
    setting = setting_of(args.tokens)
    q, k, v, grad = random_inputs(setting.tokens, 12, 128, seed=0)
    config = SelectionConfig(
        setting.select, setting.scope, setting.threshold, layer_topk(setting, args.kind)
    )
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
        tuning = Tuning(tiles=tiles)
        record = {**base, "backend": "indexed", **dataclasses.asdict(tiles)}
        try:
            record.update(timed(lambda: indexed_attention(q, k, v, keep, partition, tuning)))
        except Exception as error:  # a shape that does not compile (shared memory, registers)
            record["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        results.append(record)
        print(json.dumps(record), flush=True)
    best = min((r for r in results if "error" not in r), key=lambda r: r["fwd_bwd_ms"])
    print(json.dumps({"best": best}))


if __name__ == "__main__":
    main()
