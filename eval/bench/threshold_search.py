"""Threshold selection on a GPU: the search's mass kernel by launch shape, and search vs sort.

    python -m eval.bench.threshold_search

Pools of the 55K setting's head_global selection (12 heads x 55,296 queries x 48 / 72 blocks,
random gates, one self block per query, tau 0.25); eager calls, median of ``do_bench``.
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from vmoba.attention import selection
from vmoba.attention import threshold_search as search

SHAPES = ((32, 2), (64, 4), (128, 4), (128, 8), (256, 8))  # (entries per step, warps)


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    for blocks in (48, 72):
        heads, entries = 12, 55_296 * blocks
        gates = torch.randn(heads, entries, device="cuda", generator=gen)
        is_self = (torch.arange(entries, device="cuda") % blocks == 0).expand(heads, entries)
        low, target = selection._threshold_target(gates, is_self, 0.25)
        cands = search.order_keys(gates[:, :: entries // 16][:, :16]).contiguous()
        default = search._BLOCK, search._NUM_WARPS
        for block, warps in SHAPES:
            search._BLOCK, search._NUM_WARPS = block, warps
            ms = do_bench(lambda: search.candidate_masses(gates, is_self, low, cands), rep=50)
            print(f"{blocks} blocks: one pass, BLOCK={block} warps={warps}: {ms * 1e3:.0f} us")
        search._BLOCK, search._NUM_WARPS = default
        found = do_bench(lambda: search.search_keep(gates, is_self, low, target), rep=50)
        config = selection.SelectionConfig("threshold", "head_global", 0.25)
        ranked = do_bench(lambda: selection._select_in_pools(gates, is_self, config), rep=50)
        print(f"{blocks} blocks: search {found:.2f} ms, sort {ranked:.2f} ms")


if __name__ == "__main__":
    main()
