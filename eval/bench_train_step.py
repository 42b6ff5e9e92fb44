"""One optimizer step of the Wan 2.1 1.3B transformer, full attention vs VMoBA, on one GPU.

    python -m eval.bench_train_step --out-dir eval/results

Random weights (the architecture is what costs), bf16 autocast over float32 weights (as Lightning's
bf16-mixed), gradient checkpointing of every block, AdamW, batch 1, a random 512-token text
embedding. Writes ``train_step_h200.json`` (records: tokens, attention, step_s, peak_mem_gib,
density, date, device) and ``train_step_h200.md``.
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
from torch.nn.attention import SDPBackend, sdpa_kernel

from vmoba.model import VideoDiT, VMoBASettings, load_transformer

WAN_1_3B = dict(
    patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)


@dataclass(frozen=True)
class Setting:
    """A latent ``[16, T, H, W]`` (patch 1x2x2 -> grid T x H/2 x W/2) and its VMoBA blocks."""

    name: str
    latent: tuple[int, int, int]
    settings: VMoBASettings

    @property
    def tokens(self) -> int:
        t, h, w = self.latent
        return t * (h // 2) * (w // 2)


SETTINGS = [
    Setting("93x576x1024", (24, 72, 128), VMoBASettings(block_1d=3, block_2d=[6, 8], block_3d=[8, 12, 8])),
    Setting("81x480x832", (21, 60, 104), VMoBASettings(block_1d=3, block_2d=[5, 13], block_3d=[7, 5, 13])),
]


def measure(setting: Setting, attention: str, steps: int) -> dict:
    """Median seconds of ``steps`` optimizer steps (after one warm-up step) and peak memory."""
    torch.manual_seed(0)
    settings = dataclasses.replace(setting.settings, attention=attention)
    dit = VideoDiT(load_transformer(WAN_1_3B), settings).cuda()
    dit.transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-5)
    latents = torch.randn(1, 16, *setting.latent, device="cuda")
    text = torch.randn(1, 512, 4096, device="cuda")
    timestep = torch.tensor([500.0], device="cuda")
    seconds = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(
            [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]
        ):
            loss = dit(latents, timestep, text).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    densities = {k: round(v.item(), 4) for k, v in dit.densities().items()}
    record = dict(
        tokens=setting.tokens, setting=setting.name, attention=attention,
        step_s=statistics.median(seconds[1:]), peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
        density=sum(densities.values()) / 3 if densities else 1.0, density_per_kind=densities,
        date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
        torch=torch.__version__,
    )
    del dit, optimizer
    torch.cuda.empty_cache()
    return record


def markdown(records: list[dict]) -> str:
    lines = ["| setting | tokens | attention | step s | peak GiB | density | speedup vs full |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        full = next(f for f in records if f["tokens"] == r["tokens"] and f["attention"] == "full")
        lines.append(f"| {r['setting']} | {r['tokens']} | {r['attention']} | {r['step_s']:.2f} | "
                     f"{r['peak_mem_gib']:.1f} | {r['density']:.3f} | {full['step_s'] / r['step_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path("eval/results"))
    args = parser.parse_args()
    records = []
    for setting in SETTINGS:
        for attention in ("full", "vmoba"):
            records.append(measure(setting, attention, args.steps))
            print(json.dumps(records[-1]), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "train_step_h200.json").write_text(json.dumps(records, indent=1) + "\n")
    table = markdown(records)
    (args.out_dir / "train_step_h200.md").write_text(
        "# One Wan 2.1 1.3B training step, full attention vs VMoBA (threshold + head_global, tau "
        f"0.25)\n\nCommand: `python -m eval.bench_train_step --steps {args.steps}`\n\n" + table
    )
    print(table)


if __name__ == "__main__":
    main()
