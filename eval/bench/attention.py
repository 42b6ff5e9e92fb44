"""VMoBA attention speed on a GPU against dense cuDNN and FlashAttention-2 SDPA, one sweep.

    python -m eval.bench.attention --out-dir eval/results

Per setting (tokens, layer kind) and backend: forward and forward+backward milliseconds of the
whole ``vmoba_attention`` call (gates, selection and attention), the selection alone, dense SDPA
times measured in the same run, kept density, and peak memory above dense cuDNN's. Writes
``attention_<device>.json`` and ``.md`` (``attention_h200`` on an H200); prints the markdown
table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from eval.results_io import checkout_commit, device_tag, write_results
from vmoba.attention import (
    SelectionConfig,
    VMoBAConfig,
    flex_tile_density,
    kept_density,
    vmoba_attention,
    vmoba_selection,
)


@dataclass(frozen=True)
class Setting:
    tokens: int
    grid: tuple[int, int, int]
    blocks: dict[str, object]
    select: str
    scope: str
    threshold: float = 0.25
    topk: Optional[dict[str, int]] = None


SETTINGS = [
    Setting(
        55_296, (24, 36, 64), {"1d": 3, "2d": (6, 8), "3d": (8, 12, 8)}, "threshold", "head_global"
    ),
    Setting(
        32_760,
        (21, 30, 52),
        {"1d": 3, "2d": (5, 13), "3d": (7, 5, 13)},
        "topk",
        "query_head",
        topk={"1d": 2, "2d": 6, "3d": 18},
    ),
    # Our blocks at 13,440 tokens: 1,120-4,480 tokens per block (8 2D and 12 3D blocks), like
    # the paper's 141x480x832 setting (1,560-2,340); smaller blocks copy more packed rows per query.
    Setting(
        13_440, (21, 20, 32), {"1d": 3, "2d": (10, 8), "3d": (7, 10, 16)}, "threshold", "head_global"
    ),
]


def setting_of(tokens: int) -> Setting:
    return next(s for s in SETTINGS if s.tokens == tokens)


def layer_topk(setting: Setting, kind: str) -> Optional[int]:
    """Blocks per query of ``kind``'s layer in a top-k setting (None for threshold)."""
    return None if setting.topk is None else setting.topk[kind]


def random_inputs(tokens: int, heads: int, dim: int, seed: int) -> list[torch.Tensor]:
    """Seeded bf16 q, k, v ``[1, tokens, heads, dim]`` (leaves) and an output gradient, on CUDA."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(1, tokens, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
        .requires_grad_()
        for _ in range(3)
    )
    return [q, k, v, torch.randn_like(q)]


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tokens`` (a setting of the sweep) and ``--kind`` (its layer) for one-layer scripts."""
    parser.add_argument("--tokens", type=int, choices=[s.tokens for s in SETTINGS], default=55_296)
    parser.add_argument("--kind", choices=("1d", "2d", "3d"), default="2d")


def _time(fn: Callable[[], object], tensors: list[torch.Tensor]) -> float:
    return do_bench(fn, warmup=50, rep=200, grad_to_none=tensors, return_mode="median")


def _fwd_bwd(attend: Callable[[], torch.Tensor], grad: torch.Tensor) -> Callable[[], None]:
    return lambda: attend().backward(grad)


def _peak_gib(fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def _dense(q, k, v, backend: SDPBackend) -> Callable[[], torch.Tensor]:
    def attend():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(
                *(x.transpose(1, 2) for x in (q, k, v))
            ).transpose(1, 2)

    return attend


def run(
    settings: list[Setting], backends: list[str], heads: int, dim: int, commit: str
) -> list[dict]:
    device = torch.cuda.get_device_name()
    records = []
    for setting in settings:
        q, k, v, grad = random_inputs(setting.tokens, heads, dim, seed=setting.tokens)
        dense = {}
        for name, kernel in (
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("fa2", SDPBackend.FLASH_ATTENTION),
        ):
            attend = _dense(q, k, v, kernel)
            dense[f"dense_{name}_fwd_ms"] = _time(attend, [q, k, v])
            dense[f"dense_{name}_fwd_bwd_ms"] = _time(_fwd_bwd(attend, grad), [q, k, v])
        dense_peak = _peak_gib(_fwd_bwd(_dense(q, k, v, SDPBackend.CUDNN_ATTENTION), grad))
        for kind, block in setting.blocks.items():
            topk = layer_topk(setting, kind)
            config = SelectionConfig(setting.select, setting.scope, setting.threshold, topk)
            part, keep = vmoba_selection(q, k, grid=setting.grid, block=block, config=config)
            density = kept_density(keep, part).item()
            kept_flop = 4 * density * heads * setting.tokens**2 * dim  # forward, B = 1
            tile_density = flex_tile_density(keep, part).item()  # the work flex does
            select_ms = _time(
                lambda: vmoba_selection(q, k, grid=setting.grid, block=block, config=config), []
            )
            for backend in backends:
                layer = VMoBAConfig(
                    setting.select, setting.scope, setting.threshold, topk, block=block,
                    backend=backend,
                )

                def attend():
                    return vmoba_attention(q, k, v, grid=setting.grid, config=layer)

                fwd_ms = _time(attend, [q, k, v])
                record = dict(
                    tokens=setting.tokens,
                    layer_kind=kind,
                    block=list(block) if isinstance(block, tuple) else block,
                    blocks=part.num_blocks,
                    select=setting.select,
                    scope=setting.scope,
                    topk=topk,
                    backend=backend,
                    fwd_ms=fwd_ms,
                    fwd_bwd_ms=_time(_fwd_bwd(attend, grad), [q, k, v]),
                    selection_ms=select_ms,
                    **dense,
                    density=density,
                    kept_fwd_tflops=kept_flop / fwd_ms / 1e9,
                    flex_tile_density=tile_density,
                    extra_peak_mem_gib=_peak_gib(_fwd_bwd(attend, grad)) - dense_peak,
                    date=datetime.date.today().isoformat(),
                    device=device,
                    torch=torch.__version__,
                    commit=commit,
                )
                records.append(record)
                print(json.dumps(record), flush=True)
    return records


def markdown(records: list[dict]) -> str:
    """Per-kind rows and, per (tokens, backend), the cycle speedup over dense cuDNN."""
    lines = [
        "| tokens | kind | blocks | select | backend | density | fwd ms | fwd+bwd ms | selection ms "
        "| cuDNN fwd / fwd+bwd ms | FA2 fwd / fwd+bwd ms | speedup fwd / fwd+bwd vs cuDNN "
        "| x density (fwd+bwd) | fwd TFLOP/s on kept pairs | extra peak GiB |",
        "|" + "---|" * 15,
    ]
    for r in records:
        fwd, both = (
            r["dense_cudnn_fwd_ms"] / r["fwd_ms"],
            r["dense_cudnn_fwd_bwd_ms"] / r["fwd_bwd_ms"],
        )
        lines.append(
            f"| {r['tokens']} | {r['layer_kind']} | {r['blocks']} | {r['select']}+{r['scope']} | {r['backend']} "
            f"| {r['density']:.3f} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['selection_ms']:.2f} "
            f"| {r['dense_cudnn_fwd_ms']:.2f} / {r['dense_cudnn_fwd_bwd_ms']:.2f} "
            f"| {r['dense_fa2_fwd_ms']:.2f} / {r['dense_fa2_fwd_bwd_ms']:.2f} "
            f"| {fwd:.2f}x / {both:.2f}x | {both * r['density']:.2f} | {r['kept_fwd_tflops']:.0f} "
            f"| {r['extra_peak_mem_gib']:.2f} |"
        )
    lines += [
        "",
        "Cycle speedup over dense cuDNN: the sum of dense times over the sum of VMoBA times of the "
        "layer kinds measured (all three unless listed); `best` takes the fastest backend per kind, "
        "separately for fwd and fwd+bwd (the issue's bar).",
        "",
        "| tokens | backend | kinds | cycle speedup fwd | cycle speedup fwd+bwd | selection share of fwd |",
        "|---|---|---|---|---|---|",
    ]
    for tokens in sorted({r["tokens"] for r in records}, reverse=True):
        at = [r for r in records if r["tokens"] == tokens]
        groups = {b: [r for r in at if r["backend"] == b] for b in sorted({r["backend"] for r in at})}
        kinds = sorted({r["layer_kind"] for r in at})
        if len(groups) > 1:
            groups["best"] = [
                {**min(rows, key=lambda r: r["fwd_ms"]),
                 "fwd_bwd_ms": min(r["fwd_bwd_ms"] for r in rows)}
                for rows in ([r for r in at if r["layer_kind"] == k] for k in kinds)
            ]
        for backend, rows in groups.items():
            fwd = sum(r["dense_cudnn_fwd_ms"] for r in rows) / sum(r["fwd_ms"] for r in rows)
            both = sum(r["dense_cudnn_fwd_bwd_ms"] for r in rows) / sum(
                r["fwd_bwd_ms"] for r in rows
            )
            share = sum(r["selection_ms"] for r in rows) / sum(r["fwd_ms"] for r in rows)
            measured = sorted(r["layer_kind"] for r in rows)
            covered = "all" if measured == kinds else ", ".join(measured)
            lines.append(
                f"| {tokens} | {backend} | {covered} | {fwd:.2f}x | {both:.2f}x | {share:.0%} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["varlen"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[s.tokens for s in SETTINGS])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--out-dir", type=Path, default=Path("eval/results"))
    parser.add_argument(
        "--commit", default=None, help="recorded commit (default: the checkout's, from git)"
    )
    args = parser.parse_args()
    settings = [s for s in SETTINGS if s.tokens in args.tokens]
    commit = args.commit or checkout_commit()
    records = run(settings, args.backends, args.heads, args.dim, commit)
    table = markdown(records)
    write_results(
        args.out_dir, f"attention_{device_tag()}", records, module="eval.bench.attention",
        commit=commit,
        title="VMoBA attention vs dense SDPA (B=1, H=12, D=128, bf16)", table=table,
    )
    print(table)


if __name__ == "__main__":
    main()
