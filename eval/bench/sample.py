"""Sampling latency of Wan 2.1 1.3B, full attention vs VMoBA, at the paper's Table 1 sizes.

    python -m eval.bench.sample --out-dir eval/results [--steps 50]

Samples as a user does (:func:`vmoba.sampling.sample_videos`, the path of ``vmoba.sample`` and
``main.py predict``): UniPC, classifier-free guidance (both branches in one batched forward a
step), dense attention for the first 25% of the steps, bf16 autocast over float32 weights (as
Lightning's bf16-mixed), random weights (seed 0), a random 512-token text embedding, batch 1.
All sizes run in one process, full attention first, then VMoBA (its compiled selection meets nine
layer shapes, so a recompile limit would show).
Times the denoising loop, each DiT forward synchronised: the VAE decode is the same on both
sides and is left out. Per size: total seconds, median ms of a dense and of a sparse step, the
``--steps``-step total, the 50-step total those medians give, peak memory and kept density.
Writes ``sample_<device>.json`` and ``.md`` (``sample_h200`` on an H200).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.bench.train_step import WAN_1_3B, random_inputs
from eval.results_io import checkout_commit, device_tag, write_results
from vmoba.model import VideoDiT, VMoBASettings, load_transformer
from vmoba.sampling import sample_videos

DENSE_FRACTION = 0.25
PAPER_STEPS = 50
DEVICE = torch.device("cuda")


@dataclass(frozen=True)
class Size:
    """A video size of Table 1 (or the trained setting), its latent ``(T, H, W)`` (patch 1x2x2
    gives the token grid T x H/2 x W/2), the VMoBA settings of its config file and flow shift."""

    name: str
    latent: tuple[int, int, int]
    settings: VMoBASettings
    flow_shift: float

    @property
    def tokens(self) -> int:
        t, h, w = self.latent
        return t * (h // 2) * (w // 2)


SIZES = [  # blocks and selection as configs/wan2.1_1.3b_*.yaml
    Size("81x480x832", (21, 60, 104), VMoBASettings(
        block_1d=3, block_2d=[5, 13], block_3d=[7, 5, 13], select="topk", scope="query_head",
        topk=[2, 6, 18]), 3.0),
    Size("93x576x1024", (24, 72, 128), VMoBASettings(
        block_1d=3, block_2d=[6, 8], block_3d=[8, 12, 8]), 3.0),
    Size("81x720x1280", (21, 90, 160), VMoBASettings(
        block_1d=3, block_2d=[9, 10], block_3d=[7, 15, 20], select="topk", scope="query_head",
        topk=[2, 10, 9]), 5.0),
]


def timed_forward(dit: VideoDiT) -> list[float]:
    """Make every forward of ``dit`` synchronise the GPU and append its seconds to the list."""
    seconds: list[float] = []
    forward = dit.forward

    def timed(*args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        return out

    dit.forward = timed
    return seconds


def build_dit(size: Size, attention: str) -> VideoDiT:
    """Wan 2.1 1.3B with random weights (seed 0: the same on both sides) on the GPU, for
    inference, with ``size``'s VMoBA settings or full attention."""
    torch.manual_seed(0)
    with DEVICE:
        transformer = load_transformer(WAN_1_3B)
    dit = VideoDiT(transformer, dataclasses.replace(size.settings, mode=attention))
    return dit.eval().requires_grad_(False)


def measure(size: Size, attention: str, steps: int) -> dict:
    """Sample one video of ``size`` with ``steps`` UniPC steps; the record of its timings."""
    dit = build_dit(size, attention)
    latents, _, text = random_inputs(WAN_1_3B, size.latent, DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(0)
    seconds = timed_forward(dit)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        sample_videos(
            dit, text, torch.zeros_like(text), tuple(latents.shape[1:]), steps=steps,
            guidance_scale=5.0, flow_shift=size.flow_shift, dense_fraction=DENSE_FRACTION,
            scheduler="unipc", generator=generator,
        )
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    dense_steps = round(DENSE_FRACTION * steps)
    dense_ms = statistics.median(seconds[:dense_steps]) * 1e3 if dense_steps else None
    sparse_ms = statistics.median(seconds[dense_steps:]) * 1e3
    paper_dense = round(DENSE_FRACTION * PAPER_STEPS)
    densities = {k: round(v.item(), 4) for k, v in dit.densities().items()}
    del dit
    torch.cuda.empty_cache()
    return dict(
        size=size.name, tokens=size.tokens, attention=attention, steps=steps,
        dense_steps=dense_steps, total_s=total, dense_step_ms=dense_ms, sparse_step_ms=sparse_ms,
        total_50_steps_s=(paper_dense * (dense_ms or sparse_ms)
                          + (PAPER_STEPS - paper_dense) * sparse_ms) / 1e3,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
        density=sum(densities.values()) / 3 if attention == "vmoba" else 1.0,
        density_per_kind=densities if attention == "vmoba" else {},
        date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
        torch=torch.__version__,
    )


def markdown(records: list[dict]) -> str:
    lines = [
        "| size | tokens | attention | steps | total s | dense step ms | sparse step ms "
        "| 50-step total s | peak GiB | density | speedup vs full |",
        "|" + "---|" * 11,
    ]
    for r in records:
        full = next(f for f in records if f["size"] == r["size"] and f["attention"] == "full")
        dense = "-" if r["dense_step_ms"] is None else f"{r['dense_step_ms']:.0f}"
        lines.append(
            f"| {r['size']} | {r['tokens']} | {r['attention']} | {r['steps']} | {r['total_s']:.1f} "
            f"| {dense} | {r['sparse_step_ms']:.0f} | {r['total_50_steps_s']:.1f} "
            f"| {r['peak_mem_gib']:.1f} | {r['density']:.3f} | {full['total_s'] / r['total_s']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=PAPER_STEPS)
    parser.add_argument("--sizes", nargs="+", default=[s.name for s in SIZES],
                        choices=[s.name for s in SIZES])
    parser.add_argument("--out-dir", type=Path, default=Path("eval/results"))
    parser.add_argument("--commit", default=None, help="recorded commit (default: from git)")
    args = parser.parse_args()
    commit = args.commit or checkout_commit()
    records = []
    for size in (s for s in SIZES if s.name in args.sizes):
        for attention in ("full", "vmoba"):
            records.append({**measure(size, attention, args.steps), "commit": commit})
            print(json.dumps(records[-1]), flush=True)
    table = markdown(records)
    write_results(
        args.out_dir, f"sample_{device_tag()}", records, module="eval.bench.sample", commit=commit,
        title="Sampling latency of Wan 2.1 1.3B (random weights), full attention vs VMoBA",
        table=table, note=f"UniPC, guidance 5, dense attention for the first {DENSE_FRACTION:.0%} "
        "of the steps, bf16 autocast; the denoising loop only (no VAE decode). The 50-step total "
        "is computed from the median dense and sparse step.",
    )
    print(table)


if __name__ == "__main__":
    main()
