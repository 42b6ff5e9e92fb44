"""Result files of the GPU benchmarks: JSON records and a markdown table whose header says which
command wrote them, when, on which device and torch, and at which commit."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import torch


def checkout_commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``unknown`` without git."""
    try:
        run = lambda *a: subprocess.run(a, capture_output=True, text=True, check=True).stdout
        head = run("git", "rev-parse", "HEAD").strip()
        return head + ("+dirty" if run("git", "status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_tag(gpus: int = 1) -> str:
    """The result-file name of this machine: the CUDA device's model in lower case (``h200`` for
    "NVIDIA H200", ``a100-sxm4-80gb``), with ``x2`` etc. for several GPUs; ``cpu`` without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().removeprefix("NVIDIA").strip().lower().replace(" ", "-")
    return name + (f"x{gpus}" if gpus > 1 else "")


def fastest_per_kind(
    records: list[dict], tokens: int, select: str, scope: str, key: str
) -> list[dict] | None:
    """Of ``eval.bench.attention`` records, the one with the least ``key`` (e.g. ``fwd_ms``) for
    each layer kind (1D, 2D, 3D) at these tokens and selection; None unless all three kinds were
    measured there. A 1D+2D+3D layer cycle sums them."""
    rows = [r for r in records if (r["tokens"], r["select"], r["scope"]) == (tokens, select, scope)]
    best = [
        min((r for r in rows if r["layer_kind"] == kind), key=lambda r: r[key], default=None)
        for kind in ("1d", "2d", "3d")
    ]
    return None if None in best else best


def results_header(command: str, commit: str | None = None) -> dict[str, str]:
    """Provenance of a result file: the ``command`` that wrote it, today's date, the device,
    torch's version and ``commit`` (None: :func:`checkout_commit`)."""
    return dict(
        command=command,
        date=datetime.date.today().isoformat(),
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        torch=torch.__version__,
        commit=checkout_commit() if commit is None else commit,
    )


def write_results(
    out_dir: Path, stem: str, records: list[dict], *, module: str, title: str, commit: str,
    table: str, note: str = "",
) -> None:
    """``<stem>.json`` (the records) and ``<stem>.md`` (``title``, the command line of
    ``python -m module``, date, device, torch, commit, ``note``, then ``table``) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")
    header = results_header(f"python -m {module} {' '.join(sys.argv[1:])}", commit)
    (out_dir / f"{stem}.md").write_text(
        f"# {title}\n\nCommand: `{header['command']}`\n\n"
        f"Written by that command on {header['date']}: {header['device']}, torch "
        f"{header['torch']}, commit `{header['commit']}`.{' ' + note if note else ''}\n\n" + table
    )
