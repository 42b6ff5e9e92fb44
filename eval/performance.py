"""``docs/performance.md``: every measured speed and memory number, generated from the result files.

    python -m eval.performance [--results eval/results] [--out docs/performance.md]

Each section is one result JSON under ``--results`` (written by the benchmark it names), with the
device, torch, date and commit its records carry; a file that is absent is listed as not measured.
Nothing here is typed by hand: re-run the benchmark, then this, and commit both (a test fails when
the committed document differs from what this writes).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from eval.results_io import fastest_per_kind

Column = tuple[str, Callable[[dict], str]]


def _num(key: str, spec: str = ".2f") -> Callable[[dict], str]:
    """A record's number formatted with ``spec``, or '-' where the record has none (e.g. a run
    that ran out of memory)."""
    return lambda r: "-" if r.get(key) is None else format(r[key], spec)


def _pair(a: str, b: str, digits: int = 2) -> Callable[[dict], str]:
    return lambda r: f"{r[a]:.{digits}f} / {r[b]:.{digits}f}"


def _selection(r: dict) -> str:
    return f"{r['select']}+{r['scope']}"


def _speedup(r: dict) -> str:
    fwd = r["dense_cudnn_fwd_ms"] / r["fwd_ms"]
    both = r["dense_cudnn_fwd_bwd_ms"] / r["fwd_bwd_ms"]
    return f"{fwd:.2f}x / {both:.2f}x"


ATTENTION_COLUMNS: list[Column] = [
    ("tokens", lambda r: str(r["tokens"])),
    ("kind", lambda r: r["layer_kind"]),
    ("blocks", lambda r: str(r["blocks"])),
    ("selection", _selection),
    ("backend", lambda r: r["backend"]),
    ("density", _num("density", ".3f")),
    ("fwd / fwd+bwd ms", _pair("fwd_ms", "fwd_bwd_ms")),
    ("selection ms", _num("selection_ms")),
    ("cuDNN fwd / fwd+bwd ms", _pair("dense_cudnn_fwd_ms", "dense_cudnn_fwd_bwd_ms")),
    ("FA2 fwd / fwd+bwd ms", _pair("dense_fa2_fwd_ms", "dense_fa2_fwd_bwd_ms")),
    ("speedup vs cuDNN fwd / fwd+bwd", _speedup),
    ("extra peak GiB", _num("extra_peak_mem_gib")),
]


def table(records: list[dict], columns: list[Column]) -> str:
    """A markdown table: one row per record, one column per ``(header, cell of a record)``."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in records]
    return "\n".join(lines)


def provenance(records: list[dict]) -> str:
    """'NVIDIA H200, torch 2.11.0, 2026-12-01, commit abc' over the records' distinct values."""
    parts = []
    for key, label in (("device", ""), ("machine", ""), ("torch", "torch "), ("date", ""),
                       ("commit", "commit ")):
        values = sorted({str(r[key]) for r in records if r.get(key)})
        if values:
            parts.append(label + ", ".join(values))
    return "; ".join(parts)


def attention_cycles(records: list[dict]) -> list[dict]:
    """Per (tokens, selection): dense cuDNN time / VMoBA time summed over a 1D+2D+3D cycle,
    the fastest backend per kind; only settings with all three kinds measured."""
    cycles = []
    settings = sorted({(r["tokens"], r["select"], r["scope"]) for r in records}, reverse=True)
    for tokens, select, scope in settings:
        best = fastest_per_kind(records, tokens, select, scope, "fwd_bwd_ms")
        if best is None:
            continue
        cycle = {"tokens": tokens, "select": select, "scope": scope}
        for key in ("fwd_ms", "fwd_bwd_ms", "dense_cudnn_fwd_ms", "dense_cudnn_fwd_bwd_ms"):
            cycle[key] = sum(r[key] for r in best)
        cycle["density"] = sum(r["density"] for r in best) / 3
        cycles.append(cycle)
    return cycles


def train_step_rows(records: list[dict]) -> list[dict]:
    """Training-step records with ``speedup``: the fastest full-attention step at the same tokens
    over this record's step (None without one)."""
    full = {}
    for r in records:
        if r["attention"] == "full":
            full[r["tokens"]] = min(full.get(r["tokens"], r["step_s"]), r["step_s"])
    return [{**r, "speedup": full[r["tokens"]] / r["step_s"] if r["tokens"] in full else None}
            for r in records]


SECTIONS: list[tuple[str, str, str, Callable[[list[dict]], str]]] = [
    (
        "Attention layer, one H200",
        "attention_h200.json",
        "`python -m eval.bench.attention`: one VMoBA layer (B = 1, H = 12, D = 128, bf16) against "
        "dense cuDNN and FlashAttention-2 in the same run.",
        lambda records: "Per layer:\n\n" + table(records, ATTENTION_COLUMNS)
        + "\n\nPer 1D+2D+3D layer cycle (fastest backend per kind):\n\n"
        + table(attention_cycles(records), [
            ("tokens", lambda r: str(r["tokens"])),
            ("selection", _selection),
            ("mean density", lambda r: f"{r['density']:.3f}"),
            ("VMoBA fwd / fwd+bwd ms", _pair("fwd_ms", "fwd_bwd_ms", 1)),
            ("cuDNN fwd / fwd+bwd ms", _pair("dense_cudnn_fwd_ms", "dense_cudnn_fwd_bwd_ms", 1)),
            ("speedup fwd / fwd+bwd", _speedup),
        ]),
    ),
    (
        "FlexAttention backend, one H200",
        "attention_h200_flex.json",
        "`python -m eval.bench.attention --backends flex`: the same layers through the `flex` "
        "backend.",
        lambda records: table(records, ATTENTION_COLUMNS),
    ),
    (
        "Training step of Wan 2.1 1.3B, one H200",
        "train_step_h200.json",
        "`python -m eval.bench.train_step`: one optimizer step (bf16-mixed, AdamW), full "
        "attention and VMoBA in the same run.",
        lambda records: table(train_step_rows(records), [
            ("tokens", lambda r: str(r["tokens"])),
            ("setting", lambda r: r["setting"]),
            ("attention", lambda r: r["attention"]),
            ("backend", lambda r: str(r.get("resolved_backend") or r.get("backend") or "-")),
            ("step s", _num("step_s")),
            ("speedup vs full", lambda r: "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"),
            ("peak GiB", _num("peak_mem_gib")),
            ("density", _num("density", ".3f")),
        ]),
    ),
    *[
        (
            title,
            name,
            "`python -m eval.bench.multigpu`: Wan 2.1 1.3B training steps with VMoBA per "
            "strategy.",
            lambda records: table(records, [
                ("strategy", lambda r: r["strategy"]),
                ("GPUs", lambda r: str(r["gpus"])),
                ("tokens", lambda r: str(r["tokens"])),
                ("step s", _num("step_s")),
                ("tokens/s", _num("tokens_per_s", ",.0f")),
                ("peak GiB", _num("peak_mem_gib")),
                ("out of memory", lambda r: "yes" if r["oom"] else "no"),
            ]),
        )
        for title, name in (
            ("Several GPUs, two H200s", "multigpu_h200x2.json"),
            ("Long videos, two H200s", "multigpu_h200x2_long.json"),
        )
    ],
    (
        "Attention layer on the CPU",
        "attention_cpu.json",
        "`python -m eval.bench.attention_cpu`: forward and forward+backward of one layer "
        "(float32).",
        lambda records: table(records, [
            ("backend", lambda r: r["backend"]),
            ("tokens", lambda r: str(r["tokens"])),
            ("H x D", lambda r: f"{r['heads']} x {r['dim']}"),
            ("kind", lambda r: r["layer_kind"]),
            ("blocks", lambda r: str(r["blocks"])),
            ("density", _num("density", ".3f")),
            ("fwd / fwd+bwd s", _pair("fwd_s", "fwd_bwd_s")),
            ("peak RSS GiB", _num("peak_rss_gib")),
            ("threads", lambda r: str(r["threads"])),
        ]),
    ),
    (
        "Video decoding on the CPU",
        "decode_cpu.json",
        "`python -m eval.bench.decode`: decoding one training clip with decord.",
        lambda records: table(records, [
            ("clip", lambda r: f"{r['frames']} x {r['height']} x {r['width']}"),
            ("codec", lambda r: r["codec"]),
            ("s per clip", _num("seconds_per_clip", ".3f")),
            ("clips/s per worker", _num("clips_per_s_per_worker")),
        ]),
    ),
]


def render(results: Path) -> str:
    """The whole document from the JSON files in ``results``."""
    parts = [
        "# Performance",
        "",
        "Generated by `python -m eval.performance` from the result files in `eval/results/`; "
        "each section names the benchmark that wrote its file. Do not edit by hand.",
    ]
    for title, name, what, body in SECTIONS:
        path = results / name
        parts += ["", f"## {title}", ""]
        if not path.is_file():
            parts.append(f"Not measured (`{name}` absent).")
            continue
        loaded = json.loads(path.read_text())
        records = loaded if isinstance(loaded, list) else [loaded]
        parts += [f"{what} From `eval/results/{name}` ({provenance(records)}).", "", body(records)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.performance",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("eval/results"))
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
