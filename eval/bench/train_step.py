"""One optimizer step of the Wan 2.1 1.3B transformer, full attention vs VMoBA, on one GPU.

    python -m eval.bench.train_step --out-dir eval/results

Random weights (the architecture is what costs), bf16 autocast over float32 weights (as Lightning's
bf16-mixed), gradient checkpointing of every block, AdamW, batch 1, a random 512-token text
embedding. Writes ``train_step_<device>.json`` (records: tokens, attention, step_s,
peak_mem_gib, density, date, device, commit) and ``.md`` (``train_step_h200`` on an H200).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from eval.results_io import checkout_commit, device_tag, write_results
from vmoba.attention import resolve_backend
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


def build_dit(config: dict, settings: VMoBASettings, device: torch.device) -> VideoDiT:
    """A randomly initialised ``VideoDiT`` (seed 0) built on ``device``, gradient checkpointing
    of every block on."""
    torch.manual_seed(0)
    with torch.device(device):
        dit = VideoDiT(load_transformer(config), settings)
    dit.transformer.enable_gradient_checkpointing()
    return dit


def random_inputs(
    config: dict, latent: tuple[int, int, int], device: torch.device, *, text_tokens: int = 512,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-1 latents ``[1, C, T, H, W]``, timestep ``[1]`` and text ``[1, text_tokens, text_dim]``."""
    gen = torch.Generator(device).manual_seed(seed)
    latents = torch.randn(1, config["in_channels"], *latent, generator=gen, device=device)
    text = torch.randn(1, text_tokens, config["text_dim"], generator=gen, device=device)
    return latents, torch.tensor([500.0], device=device), text


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: tuple[torch.Tensor, ...]
) -> None:
    """One AdamW step on the mean squared output; bf16 autocast (as Lightning's bf16-mixed) on
    CUDA, float32 on the CPU."""
    cuda = inputs[0].is_cuda
    kernels = (
        sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])
        if cuda
        else contextlib.nullcontext()
    )
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda), kernels:
        loss = model(*inputs).float().square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_seconds(step: Callable[[], None], steps: int, device: torch.device) -> list[float]:
    """Wall seconds of each of ``steps`` calls of ``step`` (the GPU synchronised around each)."""
    seconds = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(setting: Setting, attention: str, steps: int, backend: str = "auto") -> dict:
    """Median seconds of ``steps`` optimizer steps (after one warm-up step) and peak memory;
    ``backend`` is VMoBA's attention backend."""
    device = torch.device("cuda")
    settings = dataclasses.replace(setting.settings, mode=attention, backend=backend)
    dit = build_dit(WAN_1_3B, settings, device)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-5)
    inputs = random_inputs(WAN_1_3B, setting.latent, device)
    torch.cuda.reset_peak_memory_stats()
    seconds = step_seconds(functools.partial(train_step, dit, optimizer, inputs), steps + 1, device)
    densities = {k: round(v.item(), 4) for k, v in dit.densities().items()}
    record = dict(
        tokens=setting.tokens, setting=setting.name, attention=attention,
        backend=backend if attention == "vmoba" else None,
        resolved_backend=(
            resolve_backend(backend, device, torch.bfloat16, WAN_1_3B["attention_head_dim"]).name
            if attention == "vmoba" else None
        ),
        step_s=statistics.median(seconds[1:]), peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
        density=sum(densities.values()) / 3 if densities else 1.0, density_per_kind=densities,
        date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
        torch=torch.__version__,
    )
    del dit, optimizer
    torch.cuda.empty_cache()
    return record


def _backend_label(record: dict) -> str:
    backend, resolved = record["backend"], record.get("resolved_backend")
    if backend is None:
        return "-"
    return f"{backend} ({resolved})" if resolved and resolved != backend else backend


def markdown(records: list[dict]) -> str:
    lines = ["| setting | tokens | attention | backend | step s | peak GiB | density | speedup vs full |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        fulls = [f for f in records if f["tokens"] == r["tokens"] and f["attention"] == "full"]
        # the full-attention run of the same commit where records from several runs are merged
        full = next((f for f in fulls if f.get("commit") == r.get("commit")), fulls[0])
        lines.append(f"| {r['setting']} | {r['tokens']} | {r['attention']} | {_backend_label(r)} | {r['step_s']:.2f} | "
                     f"{r['peak_mem_gib']:.2f} | {r['density']:.3f} | {full['step_s'] / r['step_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path("eval/results"))
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=[s.tokens for s in SETTINGS],
        choices=[s.tokens for s in SETTINGS], help="settings to run, by token count",
    )
    parser.add_argument(
        "--backends", nargs="+", default=["auto"], help="VMoBA's attention backends, one run each"
    )
    parser.add_argument("--commit", default=None, help="recorded commit (default: from git)")
    args = parser.parse_args()
    commit = args.commit or checkout_commit()
    records = []
    for setting in (s for s in SETTINGS if s.tokens in args.tokens):
        runs = [("full", "auto"), *(("vmoba", backend) for backend in args.backends)]
        for attention, backend in runs:
            records.append({**measure(setting, attention, args.steps, backend), "commit": commit})
            print(json.dumps(records[-1]), flush=True)
    table = markdown(records)
    write_results(
        args.out_dir, f"train_step_{device_tag()}", records, module="eval.bench.train_step",
        commit=commit,
        title="One Wan 2.1 1.3B training step, full attention vs VMoBA (threshold + "
        "head_global, tau 0.25)", table=table,
    )
    print(table)


if __name__ == "__main__":
    main()
