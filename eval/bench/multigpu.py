"""Training throughput of the Wan 2.1 1.3B transformer on one GPU and on two: DDP, FSDP, Ulysses.

    python -m eval.bench.multigpu --out-dir eval/results                    # 2 GPUs, ~5-8 minutes
    python -m eval.bench.multigpu --tiny --device cpu --out-dir /tmp/mgpu   # the same logic on CPU

The step is bench_train_step's (random weights, bf16 autocast, gradient checkpointing, AdamW,
batch 1 per data-parallel replica, VMoBA threshold + head_global, tau 0.25, the 93x576x1024
blocks) on latents of ``--frames`` latent frames of 72 x 128 (55,296 tokens at 24 frames):

- ``single``: one GPU.
- ``ddp``: two GPUs, one video each, gradients averaged (torch DDP, as configs/multigpu/ddp.yaml).
- ``fsdp``: two GPUs, one video each; parameters, gradients and AdamW state sharded per Wan block,
  FSDP's activation checkpointing and bf16 mixed precision (as ``configs/multigpu/fsdp.yaml``).
- ``ulysses``: two GPUs share one video, each holding half of its tokens (``vmoba.parallel``).

Then ``single`` and ``ulysses`` again at each of ``--long-frames``: longer videos, to find one that
trains on two GPUs but not on one (running out of memory is recorded, not raised).

Every run is a fresh group of processes, one per GPU (torch.multiprocessing; no torchrun), so
peak memory is per run and an out-of-memory rank cannot take the sweep down. NVLink multicast is
off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1). Writes
``<name>.json`` (records: gpus, strategy, frames, tokens, samples_per_s, tokens_per_s, step_s,
peak_mem_gib, oom, error, date, device) and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from eval.bench.train_step import (
    SETTINGS,
    WAN_1_3B,
    Setting,
    build_dit,
    random_inputs,
    step_seconds,
    train_step,
)
from eval.results_io import device_tag
from vmoba.model import TINY_WAN, VMoBASettings

NO_NVLINK_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
STRATEGIES = ("single", "ddp", "fsdp", "ulysses")
WARMUP_STEPS = 1
TINY = Setting("tiny", (4, 16, 16), VMoBASettings(block_1d=1, block_2d=[4, 4], block_3d=[2, 4, 4]))


@dataclass(frozen=True)
class Run:
    """One measurement: ``strategy`` on ``gpus`` processes, latents of ``frames`` latent frames."""

    strategy: str
    gpus: int
    frames: int
    steps: int  # timed, after `warmup` untimed steps
    warmup: int = WARMUP_STEPS

    @property
    def replicas(self) -> int:
        """Videos per step: one per GPU, except Ulysses' GPUs that share one."""
        return 1 if self.strategy in ("single", "ulysses") else self.gpus


@dataclass(frozen=True)
class Model:
    """What to train: the transformer's config, its VMoBA setting and the text length."""

    config: dict
    setting: Setting
    text_tokens: int

    def latent(self, frames: int) -> tuple[int, int, int]:
        return (frames, *self.setting.latent[1:])

    def tokens(self, frames: int) -> int:
        patch = self.config["patch_size"]
        t, h, w = self.latent(frames)
        return t // patch[0] * (h // patch[1]) * (w // patch[2])


def _fsdp(dit: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Lightning's FSDPStrategy with configs/multigpu/fsdp.yaml: one FSDP unit per Wan block, then
    non-reentrant activation checkpointing inside each unit, bf16 parameters on the GPU."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    dit.transformer.disable_gradient_checkpointing()
    bf16 = MixedPrecision(torch.bfloat16, torch.bfloat16, torch.bfloat16)
    model = FullyShardedDataParallel(
        dit,
        auto_wrap_policy=ModuleWrapPolicy({WanTransformerBlock}),
        mixed_precision=bf16 if device.type == "cuda" else None,
        device_id=device if device.type == "cuda" else None,
        use_orig_params=True,
    )
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, WanTransformerBlock))
    return model


def _measure(rank: int, run: Run, model: Model, device: torch.device) -> dict:
    """Median step seconds over ``run.steps`` timed steps and this rank's peak memory."""
    dit = build_dit(model.config, model.setting.settings, device)
    if run.strategy == "fsdp":
        trained = _fsdp(dit, device)
    else:
        if run.strategy == "ulysses":  # its own group, as UlyssesStrategy: DDP has the world
            dit.enable_sequence_parallel(dist.new_subgroups(run.gpus)[0])
        device_ids = [device.index] if device.type == "cuda" else None
        trained = (
            dit
            if run.strategy == "single"
            else torch.nn.parallel.DistributedDataParallel(
                dit, device_ids=device_ids, gradient_as_bucket_view=True
            )
        )
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5)
    replica = rank if run.replicas > 1 else 0  # Ulysses' ranks share one video
    inputs = random_inputs(
        model.config, model.latent(run.frames), device, text_tokens=model.text_tokens, seed=replica
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = functools.partial(train_step, trained, optimizer, inputs)
    seconds = step_seconds(step, run.warmup + run.steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return dict(step_s=statistics.median(seconds[run.warmup :]), peak_mem_gib=peak)


def _worker(rank: int, run: Run, model: Model, device_type: str, folder: str) -> None:
    os.environ.update(NO_NVLINK_MULTICAST)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=run.gpus,
    )
    try:
        result = _measure(rank, run, model, device)
    except torch.OutOfMemoryError as error:
        result = dict(oom=True, error=str(error).splitlines()[0])
    Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    if not result.get("oom"):  # a rank that ran out of memory may leave the others waiting
        dist.destroy_process_group()


def _rank_results(folder: str, gpus: int) -> list[dict]:
    files = [Path(folder, f"rank{r}.json") for r in range(gpus)]
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def launch(run: Run, model: Model, device_type: str, timeout: float) -> dict:
    """Run one measurement in ``run.gpus`` fresh processes; its record (never raises)."""
    record = dict(asdict(run), tokens=model.tokens(run.frames), oom=False, error=None)
    with tempfile.TemporaryDirectory() as folder:
        context = mp.start_processes(
            _worker,
            args=(run, model, device_type, folder),
            nprocs=run.gpus,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                failed = any(r.get("oom") for r in _rank_results(folder, run.gpus))
                if failed or time.monotonic() > deadline:
                    record["error"] = None if failed else f"no result after {timeout:.0f} s"
                    for process in context.processes:
                        process.kill()
                        process.join()
                    break
        except ProcessException as error:  # a rank raised: the last line of its traceback
            record["error"] = str(error).strip().splitlines()[-1]
        results = _rank_results(folder, run.gpus)
    oom = [r for r in results if r.get("oom")]
    if oom:
        record.update(oom=True, error=oom[0]["error"])
    elif len(results) == run.gpus and record["error"] is None:
        step_s = max(r["step_s"] for r in results)  # the ranks wait for each other every step
        peaks = [r["peak_mem_gib"] for r in results if r["peak_mem_gib"] is not None]
        record.update(
            step_s=step_s,
            samples_per_s=run.replicas / step_s,
            tokens_per_s=run.replicas * record["tokens"] / step_s,
            peak_mem_gib=max(peaks) if peaks else None,
        )
    return record


def markdown(records: list[dict]) -> str:
    lines = [
        "| strategy | GPUs | latent frames | tokens | samples/s | tokens/s | vs single | "
        "peak GiB per GPU | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        single = next(
            (s for s in records if s["strategy"] == "single" and s["frames"] == r["frames"]), None
        )
        fits = "samples_per_s" in r
        ratio = (
            f"{r['samples_per_s'] / single['samples_per_s']:.2f}x"
            if fits and single is not None and "samples_per_s" in single
            else "-"
        )
        note = "out of memory" if r["oom"] else (r["error"] or "")
        peak = r.get("peak_mem_gib")
        lines.append(
            f"| {r['strategy']} | {r['gpus']} | {r['frames']} | {r['tokens']} | "
            + (f"{r['samples_per_s']:.3f} | {r['tokens_per_s']:.0f} | " if fits else "- | - | ")
            + f"{ratio} | {'-' if peak is None else f'{peak:.1f}'} | {note} |"
        )
    return "\n".join(lines) + "\n"


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name(0)
    return "cpu"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("eval/results"))
    parser.add_argument(
        "--name",
        help="output file stem (default multigpu_<GPU model>x<GPUs>, e.g. multigpu_h200x2, or "
        "multigpu_tiny_<device> with --tiny)",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the 3-layer test model, tiny videos")
    parser.add_argument("--gpus", type=int, default=2, help="processes of the parallel runs")
    parser.add_argument(
        "--strategies",
        nargs="*",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help="of the main sweep (none: only the long videos)",
    )
    parser.add_argument("--frames", type=int, help="latent frames (default 24: 55,296 tokens)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument(
        "--long-frames",
        type=int,
        nargs="*",
        help="latent frames of the does-it-fit runs (default 96: 221,184 tokens; none: skip)",
    )
    parser.add_argument("--long-steps", type=int, default=1)
    parser.add_argument(
        "--long-strategies",
        nargs="+",
        choices=("single", "ulysses"),
        default=["single", "ulysses"],
        help="of the long runs",
    )
    parser.add_argument(
        "--long-warmup",
        type=int,
        default=WARMUP_STEPS,
        help="untimed steps before the long runs' timed ones (0: the first step is timed)",
    )
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    args = parser.parse_args(argv)

    os.environ.update(NO_NVLINK_MULTICAST)  # before any process group exists
    # Long videos allocate transients of tens of GiB (a 3D layer's gates at 663K tokens: 25.6 GiB
    # per Ulysses rank); without expandable segments 34 GiB sat reserved but unusable there.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.tiny:
        model, frames, long_frames = Model(TINY_WAN, TINY, text_tokens=12), 4, [16]
    else:
        model, frames, long_frames = Model(WAN_1_3B, SETTINGS[0], text_tokens=512), 24, [96]
    frames = args.frames or frames
    long_frames = long_frames if args.long_frames is None else args.long_frames
    name = args.name or (
        f"multigpu_tiny_{args.device}" if args.tiny else f"multigpu_{device_tag(args.gpus)}"
    )
    runs = [Run(s, 1 if s == "single" else args.gpus, frames, args.steps) for s in args.strategies]
    runs += [
        Run(s, 1 if s == "single" else args.gpus, f, args.long_steps, args.long_warmup)
        for f in long_frames
        for s in args.long_strategies
    ]
    common = dict(
        date=datetime.date.today().isoformat(),
        device=device_name(args.device),
        torch=torch.__version__,
    )
    title = (
        f"# Wan 2.1 {'tiny test model' if args.tiny else '1.3B'} training throughput: one GPU "
        f"vs {args.gpus} (DDP, FSDP, Ulysses)\n\nCommand: `python -m eval.bench.multigpu "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for run in runs:  # the files are rewritten after every run: a killed sweep keeps its results
        records.append({**launch(run, model, args.device, args.timeout), **common})
        print(json.dumps(records[-1]), flush=True)
        (args.out_dir / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
        (args.out_dir / f"{name}.md").write_text(title + markdown(records))
    print(markdown(records))


if __name__ == "__main__":
    main()
