r"""The paper's pre-training experiment (App. C, Table 6, Fig. 7): video DiTs of Table 6's sizes
trained from scratch with full attention and with VMoBA, and their validation loss.

    python -m eval.reproduce_pretraining --sizes 5.6M 60.4M --tokens 11520 --steps 1000 \
        --out-dir eval/results/pretraining
    python -m eval.reproduce_pretraining --tiny --out-dir /tmp/pretraining   # CPU, about a minute

Every (size, tokens, attention) is one ``python main.py fit`` of ``configs/pretrain/`` (base, the
size's ``dit_*.yaml``, ``tokens_*.yaml``, and ``full.yaml`` for the baseline), one process each,
into ``<out-dir>/runs/<size>_<tokens>_<attention>``: the same procedural clips in the same order,
the same noise, timesteps and learning-rate schedule on both sides. A run folder whose fit
finished with the asked steps is reused, so a sweep can be extended; an unfinished one is an
error. Then it writes ``pretraining.json`` (every run's validation curve, speed and kept density,
and the scores of its last samples), ``pretraining.md`` (final validation losses, VMoBA's gap,
its trend with model size, speed) and ``pretraining.png`` (validation loss against step and
against training FLOPs, as Fig. 7). Sample scores are the ``eval.metrics`` that need no weights:
``temporal_flickering`` of every run, and ``psnr``/``ssim`` of VMoBA's videos against the
full-attention run's (same prompts and noise).

The paper's claims (App. C, Fig. 7): VMoBA's validation loss is above full attention's, the gap
shrinks as the model grows, and at 46K tokens the curves nearly overlap.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from eval.callbacks import CURVE_FILE  # noqa: E402
from eval.metrics import METRICS, Options  # noqa: E402
from eval.results_io import results_header  # noqa: E402
from eval.run import build_metrics, evaluate, metric_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "main.py"
CONFIGS = REPO / "configs" / "pretrain"
SIZES = {
    "tiny": "dit_tiny.yaml",  # CPU checks only; not a Table 6 model
    "5.6M": "dit_5.6m.yaml",
    "60.4M": "dit_60.4m.yaml",
    "217M": "dit_217m.yaml",
    "526M": "dit_526m.yaml",
}
TOKENS = (1024, 11520, 46080)  # configs/pretrain/tokens_<n>.yaml; 1024 for CPU checks
MODES = ("full", "vmoba")
TINY = dict(sizes=["tiny"], tokens=[1024], steps=4, val_every=2)
NO_WEIGHTS = [name for name, metric in METRICS.items() if not metric.needs.weights]
STEM = "pretraining"


class SweepError(Exception):
    """A sweep that cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class Run:
    """One fit of the sweep."""

    size: str
    tokens: int
    mode: str

    @property
    def name(self) -> str:
        return f"{self.size}_{self.tokens}_{self.mode}"

    def fit_args(self, steps: int, val_every: int, run_dir: Path, tiny: bool) -> list[str]:
        """``python main.py`` arguments of this run."""
        configs = ["base.yaml", SIZES[self.size], f"tokens_{self.tokens}.yaml"]
        configs += ["tiny.yaml"] if tiny else []
        configs += ["full.yaml"] if self.mode == "full" else []
        return [
            "fit",
            *(f"--config={CONFIGS / name}" for name in configs),
            f"--trainer.max_steps={steps}",
            f"--trainer.val_check_interval={val_every}",
            f"--trainer.default_root_dir={run_dir}",
        ]


def finished(run_dir: Path, steps: int) -> bool:
    """Whether ``run_dir`` holds a fit that ran to ``steps``; a :class:`SweepError` when it holds
    anything else (a run that stopped early, or of other steps)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return False
    metrics = run_dir / "metrics.json"
    done = json.loads(metrics.read_text()).get("global_step") if metrics.is_file() else None
    if done == steps and (run_dir / CURVE_FILE).is_file():
        return True
    raise SweepError(
        f"{run_dir} holds a run that did not finish {steps} steps (it reached {done}); remove "
        "it, or finish it with python main.py fit --config ... --ckpt_path last"
    )


def fit(run: Run, steps: int, val_every: int, run_dir: Path, tiny: bool) -> None:
    """Train ``run`` into ``run_dir`` with ``python main.py fit``, in a process of its own (its
    compiled graphs, memory and timings its own)."""
    args = run.fit_args(steps, val_every, run_dir, tiny)
    print(f"== {run.name}: python main.py {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, str(MAIN), *args])
    if result.returncode:
        raise SweepError(f"{run.name}: python main.py fit exited with {result.returncode}")


def block_parameters(config: DictConfig) -> int:
    """Parameters of the transformer blocks of a run's DiT: Table 6's sizes, which count only
    the weight matrices (5.60M, 60.46M, 216.76M, 526.42M), are these without biases and norms."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**OmegaConf.to_container(config.model.transformer))
    return sum(p.numel() for p in model.blocks.parameters())


def validation_settings(config: DictConfig) -> dict[str, int]:
    """Held-out clips and timesteps per clip behind each validation loss of a run."""
    clips = int(config.trainer.limit_val_batches) * config.data.batch_size
    return dict(clips=clips, timesteps=config.model.val_timesteps)


def final_samples(run_dir: Path, steps: int) -> list[Path]:
    """The videos sampled after the last validation."""
    return sorted((run_dir / "samples").glob(f"step{steps:06d}_*.mp4"))


def sample_scores(videos: list[Path], reference_dir: Path | None) -> dict[str, dict]:
    """:data:`NO_WEIGHTS` metrics of ``videos`` (those needing a reference only with one)."""
    names = [n for n in NO_WEIGHTS if reference_dir is not None or not METRICS[n].needs.reference]
    ready, _ = build_metrics(names, Options(), reference_dir is not None, False)
    scores, skipped = evaluate(videos, ready, reference_dir, None)
    if skipped:
        raise SweepError(f"unreadable samples: {skipped}")
    return {name: metric_result(scores[name]) for name in ready}


def collect(run: Run, run_dir: Path, steps: int, full_dir: Path | None) -> dict:
    """A finished run's record: its curve, ``metrics.json`` numbers and sample scores."""
    curve = [json.loads(line) for line in (run_dir / CURVE_FILE).read_text().splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = OmegaConf.load(run_dir / "config.yaml")  # the run's resolved configuration
    return dict(
        size=run.size,
        tokens=run.tokens,
        attention=run.mode,
        run_dir=str(run_dir),
        block_parameters=block_parameters(config),
        steps=steps,
        validation=validation_settings(config),
        final_val_loss=curve[-1]["val_loss"],
        median_step_s=metrics["median_step_s"],
        tokens_per_s=metrics["tokens_per_s"],
        train_tflops=curve[-1]["train_tflops"],
        density=curve[-1]["density"],
        curve=curve,
        samples=sample_scores(final_samples(run_dir, steps), full_dir),
    )


def comparisons(records: list[dict]) -> list[dict]:
    """Per (tokens, size): VMoBA against full attention."""
    by_key = {(r["tokens"], r["size"], r["attention"]): r for r in records}
    rows = []
    for tokens, size, mode in by_key:
        if mode != "vmoba" or (tokens, size, "full") not in by_key:
            continue
        ours, full = by_key[tokens, size, "vmoba"], by_key[tokens, size, "full"]
        gap = ours["final_val_loss"] - full["final_val_loss"]
        rows.append(dict(
            tokens=tokens,
            size=size,
            block_parameters=full["block_parameters"],
            full_val_loss=full["final_val_loss"],
            vmoba_val_loss=ours["final_val_loss"],
            gap=gap,
            relative_gap=gap / full["final_val_loss"],
            full_step_s=full["median_step_s"],
            vmoba_step_s=ours["median_step_s"],
            step_speedup=full["median_step_s"] / ours["median_step_s"],
            flops_ratio=ours["train_tflops"] / full["train_tflops"],
            density=ours["density"],
            full_flickering=full["samples"]["temporal_flickering"]["mean"],
            vmoba_flickering=ours["samples"]["temporal_flickering"]["mean"],
            psnr_vs_full=ours["samples"]["psnr"]["mean"],
            ssim_vs_full=ours["samples"]["ssim"]["mean"],
        ))
    return sorted(rows, key=lambda r: (r["tokens"], r["block_parameters"]))


def claims(rows: list[dict]) -> list[str]:
    """The paper's qualitative claims, checked per token setting, in plain sentences."""
    lines = []
    for tokens in sorted({r["tokens"] for r in rows}):
        these = [r for r in rows if r["tokens"] == tokens]
        gaps = ", ".join(f"{r['size']} {r['gap']:+.4f}" for r in these)
        above = all(r["gap"] > 0 for r in these)
        lines.append(f"- {tokens:,} tokens: VMoBA's final validation loss minus full attention's: "
                     f"{gaps}. Gap above zero at every size: {'yes' if above else 'no'}.")
        if len(these) > 1:
            shrinks = all(b["gap"] < a["gap"] for a, b in zip(these, these[1:]))
            lines.append(f"  Gap shrinking as the model grows: {'yes' if shrinks else 'no'}.")
    return lines


def markdown(header: dict, rows: list[dict], steps: int, validation: dict[str, int]) -> str:
    """``pretraining.md``: provenance, the comparison table and the claims."""
    table = [
        "| tokens | size (block params) | full val loss | VMoBA val loss | gap (rel.) | "
        "step s full / VMoBA (speedup) | train FLOPs VMoBA/full | kept density 1D/2D/3D | "
        "flickering full / VMoBA | VMoBA vs full PSNR / SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        density = "/".join(f"{v:.2f}" for v in r["density"].values())
        table.append(
            f"| {r['tokens']:,} | {r['size']} ({r['block_parameters'] / 1e6:.2f}M) | "
            f"{r['full_val_loss']:.4f} | {r['vmoba_val_loss']:.4f} | {r['gap']:+.4f} "
            f"({r['relative_gap']:+.1%}) | {r['full_step_s'] * 1e3:.0f} / "
            f"{r['vmoba_step_s'] * 1e3:.0f} ms ({r['step_speedup']:.2f}x) | "
            f"{r['flops_ratio']:.2f} | {density} | {r['full_flickering']:.4f} / "
            f"{r['vmoba_flickering']:.4f} | {r['psnr_vs_full']:.2f} dB / {r['ssim_vs_full']:.3f} |"
        )
    return "\n".join([
        "# Pre-training from scratch: full attention vs VMoBA (paper App. C, Table 6, Fig. 7)",
        "",
        f"Command: `{header['command']}`",
        "",
        f"Written by that command on {header['date']}: {header['device']}, torch "
        f"{header['torch']}, commit `{header['commit']}`.",
        "",
        f"{steps} steps per run. Validation loss: {validation['clips']} held-out procedural "
        f"clips, each at {validation['timesteps']} fixed timesteps with fixed noise (the same for "
        "every run); final = at the last step. Step "
        "times are the median of each run's steps (its first 10% left out); runs ran one after "
        "another on the device. FLOPs by `eval.flops` (forward x 3) at the measured density. "
        "Flickering: `temporal_flickering` of each run's last samples; PSNR/SSIM: VMoBA's "
        "samples against full attention's (same prompts and noise).",
        "",
        *table,
        "",
        "Against the paper's claims (VMoBA's loss above full attention's, the gap shrinking "
        "as the model grows):",
        "",
        *claims(rows),
        "",
    ])


def plot(records: list[dict], path: Path) -> None:
    """Fig. 7's layout: per token setting, validation loss against step and against training
    FLOPs; one colour per size, full attention solid, VMoBA dashed."""
    settings = sorted({r["tokens"] for r in records})
    sizes = [s for s in SIZES if any(r["size"] == s for r in records)]
    colours = dict(zip(sizes, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 4 * len(settings)), squeeze=False)
    for row, tokens in zip(axes, settings):
        for r in (r for r in records if r["tokens"] == tokens):
            curve, full = r["curve"], r["attention"] == "full"
            style = dict(color=colours[r["size"]], linestyle="-" if full else "--",
                         label=f"{r['size']} {'full' if full else 'VMoBA'}")
            row[0].plot([c["step"] for c in curve], [c["val_loss"] for c in curve], **style)
            trained = [c for c in curve if c["train_tflops"] > 0]
            row[1].plot([c["train_tflops"] for c in trained], [c["val_loss"] for c in trained],
                        **style)
        row[0].set(xlabel="step", ylabel="validation loss", yscale="log",
                   title=f"{tokens:,} tokens")
        row[1].set(xlabel="training TFLOPs", ylabel="validation loss", xscale="log",
                   yscale="log", title=f"{tokens:,} tokens")
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep(sizes: list[str], tokens: list[int], steps: int, val_every: int, out_dir: Path,
          tiny: bool, command: str) -> dict:
    """Run (or reuse) every fit, then write the JSON, markdown and PNG (``command`` recorded as
    theirs); returns the JSON."""
    runs = [Run(s, n, m) for n in tokens for s in sizes for m in MODES]
    for run in runs:  # every folder checked before the first fit
        finished(out_dir / "runs" / run.name, steps)
    for run in runs:
        run_dir = out_dir / "runs" / run.name
        if finished(run_dir, steps):
            print(f"== {run.name}: reusing {run_dir}", flush=True)
        else:
            fit(run, steps, val_every, run_dir, tiny)
    records = []
    for run in runs:
        full_dir = None
        if run.mode == "vmoba":
            full_dir = out_dir / "runs" / Run(run.size, run.tokens, "full").name / "samples"
        records.append(collect(run, out_dir / "runs" / run.name, steps, full_dir))
    header = results_header(command)
    rows = comparisons(records)
    report = dict(**header, steps=steps, val_every=val_every, tiny=tiny, comparisons=rows,
                  claims=claims(rows), runs=records)
    (out_dir / f"{STEM}.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out_dir / f"{STEM}.md").write_text(
        markdown(header, rows, steps, records[0]["validation"])
    )
    plot(records, out_dir / f"{STEM}.png")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.reproduce_pretraining",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["5.6M", "60.4M"])
    p.add_argument("--tokens", nargs="+", type=int, choices=TOKENS, default=[11520])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every run")
    p.add_argument("--val-every", type=int, default=100, help="steps between validations")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--tiny", action="store_true",
                   help=f"a CPU check of the whole path: {TINY} with configs/pretrain/tiny.yaml")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.tiny:
        vars(args).update(TINY)
    if args.steps < 1 or not 1 <= args.val_every <= args.steps:
        parser().error("need --steps >= 1 and 1 <= --val-every <= --steps")
    try:
        report = sweep(args.sizes, args.tokens, args.steps, args.val_every, args.out_dir,
                       args.tiny, f"python -m eval.reproduce_pretraining {' '.join(argv)}")
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(report["claims"]))
    print(f"wrote {args.out_dir / STEM}.json, .md and .png")


if __name__ == "__main__":
    main()
