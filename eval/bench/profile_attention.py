"""Where one VMoBA layer's GPU time goes: a kernel table from ``torch.profiler``.

    python -m eval.bench.profile_attention --tokens 55296 --kind 2d

Runs a setting of :mod:`eval.bench.attention` (random bf16 q, k, v; B = 1, H = 12, D = 128),
warms up, then profiles ``--iters`` forward+backward calls and prints the CUDA kernels by total
time (per call): which kernels and which work around them take a layer's time.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from eval.bench.attention import add_layer_arguments, layer_topk, random_inputs, setting_of
from vmoba.attention import VMoBAConfig, vmoba_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_layer_arguments(parser)
    parser.add_argument("--backend", default="varlen")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    args = parser.parse_args()

    setting = setting_of(args.tokens)
    topk = layer_topk(setting, args.kind)
    q, k, v, grad = random_inputs(setting.tokens, 12, 128, seed=0)

    config = VMoBAConfig(
        setting.select, setting.scope, setting.threshold, topk, block=setting.blocks[args.kind],
        backend=args.backend,
    )

    def step():
        vmoba_attention(q, k, v, grid=setting.grid, config=config).backward(grad)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.iters):
            step()
        torch.cuda.synchronize()
    print(f"{args.tokens} tokens, {args.kind}, {args.backend}: {args.iters} forward+backward calls")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
