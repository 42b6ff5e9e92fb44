"""The paper's Tables 1, 2, 3 and 5 beside this repo's numbers, as markdown.

    python -m eval.paper_tables [--results eval/results] [--out eval/results/paper_tables.md]
                                [--quality TABLE:SIZE:METHOD=SCORES.json ...]

The paper's cells come verbatim from ``eval/paper_tables.json`` (transcribed from the paper, shipped
with the package). Ours come from: ``eval.flops`` (every row with a FLOPs cell);
``RESULTS/attention_h200.json`` (attention speed, rows whose tokens and selection match a benchmark
setting); ``RESULTS/train_step_h200.json`` (training step, records ``tokens``, ``attention``
"full"|"vmoba", ``step_s``); and ``--quality`` files. Anything without a source reads
"not measured".

``--quality TABLE:SIZE:METHOD=SCORES.json`` (repeatable) puts the metric means of one
``python -m eval.run ... --out SCORES.json`` into one row of Table 1, 2 or 5. TABLE is table1,
table2 or table5; SIZE the row's video size FxHxW (``×`` or ``x``); METHOD the row's Method cell
without its citation (``VMoBA``, ``FullAttn``, ``MoBA``, ``+ SVG``, ``Pretrained Wan 2.1``). A key
that names no row of the paper is an error listing the valid choices. For example:

    python -m eval.paper_tables --quality table2:93x576x1024:VMoBA=vmoba.json \
        --quality table2:93x576x1024:FullAttn=full.json

Each of the paper's quality columns gets an "ours" column beside it, filled from the file's
``metrics`` -> NAME -> ``mean``: PSNR <- psnr (dB, as the paper prints it); BGConsis <-
background_consistency, SubConsist <- subject_consistency, ImageQual <- imaging_quality, Dynamic <-
dynamic_degree (eval.run writes fractions in [0, 1]; printed x100 as "NN.NN%" like the paper).
TextConsis is VBench's overall_consistency (ViCLIP on the whole clip), which this repo does not
compute: it always reads "not measured" (clip_score is a different metric). A metric that is null,
unavailable or absent in the file reads "not measured" too.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from eval.flops import forward_tflops
from eval.results_io import fastest_per_kind

PAPER_JSON = Path(__file__).with_name("paper_tables.json")
NOT_MEASURED = "not measured"
REFERENCE = "reference"
FULL_METHODS = ("FullAttn", "Pretrained Wan 2.1")

# VMoBA block counts (1D, 2D, 3D) per video size: the paper's Table 4 (spec section 6; 12 temporal
# blocks for 141 frames, where the paper prints 7). The paper gives no blocks for 81x320x512; these
# are this repo's (3 / 5x8 / 7x5x8 on its 21x20x32 grid, as in eval/bench/attention.py).
BLOCKS = {
    "81×480×832": (7, 24, 72),
    "81×720×1280": (7, 40, 36),
    "93×576×1024": (8, 48, 72),
    "141×480×832": (12, 24, 36),
    "81×320×512": (7, 16, 48),
}
# The selection each table's VMoBA rows use (Table 4): training-free top-k, trained threshold.
SELECTION = {"table1": ("topk", "query_head"), "table2": ("threshold", "head_global"),
             "table5": ("threshold", "head_global")}
TRAINING_TABLES = ("table2", "table5")
MAIN_TABLES = ("table1", "table2", "table5")
# The paper's quality columns -> the eval.run metric that fills ours beside them; None: this repo
# does not compute it (TextConsis is VBench's overall_consistency, ViCLIP on the whole clip).
QUALITY_METRICS = {"PSNR↑": "psnr", "TextConsis↑": None, "Dynamic↑": "dynamic_degree",
                   "BGConsis↑": "background_consistency", "ImageQual↑": "imaging_quality",
                   "SubConsist↑": "subject_consistency"}
# Metrics eval.run writes as fractions in [0, 1] and the paper prints as percents; psnr is in dB.
FRACTION_METRICS = frozenset({"dynamic_degree", "background_consistency", "imaging_quality",
                              "subject_consistency"})
QualityKey = tuple[str, str, str]  # (table id, video size FxHxW with '×', method without citation)


def video_size(cell: str) -> str:
    """'Origin 81×480×832 (33K Tokens)' -> '81×480×832'."""
    match = re.search(r"\d+×\d+×\d+", cell)
    if match is None:
        raise ValueError(f"no FxHxW video size in {cell!r}")
    return match.group(0)


def method_name(cell: str) -> str:
    """A Method cell without its citation: 'MoBA [19]' -> 'MoBA', '+ SVG [37]' -> '+ SVG'."""
    return re.sub(r"\s*\[\d+\]$", "", cell)


def row_key(table: str, row: list[str]) -> QualityKey:
    """(table id, video size, method) of a row of Table 1, 2 or 5: what ``--quality`` names."""
    return table, video_size(row[0]), method_name(row[1])


def latent_tokens(size: str) -> int:
    """Video tokens of Wan 2.1: VAE 4x temporal / 8x spatial, then the DiT's 1x2x2 patch."""
    frames, height, width = (int(n) for n in size.split("×"))
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def row_tflops(size: str, sparsity: str) -> float:
    """Our forward TFLOPs of a paper row: full attention when Sparsity is '-', else block-sparse
    at that density with the setting's VMoBA blocks (the sparse baselines priced the same way)."""
    tokens = latent_tokens(size)
    if sparsity == "-":
        return forward_tflops(tokens)
    return forward_tflops(tokens, attention="vmoba", blocks=BLOCKS[size], density=float(sparsity))


def parse_tflops(cell: str) -> tuple[float, float | None]:
    """'182.73T (1.54x)' -> (182.73, 1.54); '705.02T' -> (705.02, None)."""
    match = re.fullmatch(r"([\d.]+)T(?: \(([\d.]+)x\))?", cell.strip())
    if match is None:
        raise ValueError(f"not a FLOPs cell: {cell!r}")
    return float(match.group(1)), None if match.group(2) is None else float(match.group(2))


def attention_speedup(records: list[dict], tokens: int, select: str,
                      scope: str) -> tuple[float, float] | None:
    """Dense cuDNN time / VMoBA time of one 1D+2D+3D layer cycle, (forward, forward+backward), with
    the fastest backend per kind; None unless all three kinds were measured at these settings."""
    speedups = []
    for time_key, dense_key in (("fwd_ms", "dense_cudnn_fwd_ms"),
                                ("fwd_bwd_ms", "dense_cudnn_fwd_bwd_ms")):
        best = fastest_per_kind(records, tokens, select, scope, time_key)
        if best is None:
            return None
        speedups.append(sum(r[dense_key] for r in best) / sum(r[time_key] for r in best))
    return speedups[0], speedups[1]


def train_step_speedup(records: list[dict], tokens: int) -> tuple[float, float, float] | None:
    """(full step_s / VMoBA step_s, full step_s, VMoBA step_s), fastest record of each; None unless
    both were measured at these tokens."""
    steps = {a: min((r["step_s"] for r in records if (r["tokens"], r["attention"]) == (tokens, a)),
                    default=None) for a in ("full", "vmoba")}
    if None in steps.values():
        return None
    return steps["full"] / steps["vmoba"], steps["full"], steps["vmoba"]


def check_choice(value: str, choices: list[str], what: str) -> None:
    """ValueError naming ``what`` and the valid choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")


def parse_quality(spec: str, paper: dict) -> tuple[QualityKey, Path]:
    """'table2:93x576x1024:VMoBA=s.json' -> (('table2', '93×576×1024', 'VMoBA'), Path('s.json'));
    ValueError, naming the valid choices, unless the key names a row of the paper."""
    key, sep, path = spec.partition("=")
    parts = key.split(":")
    if not sep or not path or len(parts) != 3:
        raise ValueError(f"--quality expects TABLE:SIZE:METHOD=FILE, got {spec!r}")
    table, size, method = parts[0], parts[1].replace("x", "×"), parts[2]
    check_choice(table, list(MAIN_TABLES), "table")
    keys = [row_key(table, row) for row in paper[table]["rows"]]
    check_choice(size, list(dict.fromkeys(k[1] for k in keys)), f"video size of {table}")
    check_choice(method, [k[2] for k in keys if k[1] == size], f"method of {table} at {size}")
    return (table, size, method), Path(path)


def metric_means(path: Path) -> dict[str, float]:
    """{metric: mean} of an ``eval.run`` output, ``{"metrics": {NAME: {"mean": float | null, ...}
    | {"unavailable": reason}}, ...}``, leaving out metrics without a mean; ValueError when it is
    no such output or a fraction metric's mean lies outside [0, 1] (already a percent?)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from error
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not an eval.run output (no 'metrics' object)")
    means = {name: float(entry["mean"]) for name, entry in metrics.items()
             if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float))}
    for name in FRACTION_METRICS & means.keys():
        if not 0 <= means[name] <= 1:
            raise ValueError(f"{path}: {name} mean {means[name]} is not a fraction in [0, 1]")
    return means


def quality_text(metric: str | None, means: dict[str, float]) -> str:
    """One of our quality cells: '94.47%' for a fraction metric (x100, as the paper prints it),
    '22.67' for psnr (dB); NOT_MEASURED for a column this repo does not compute (None) or a metric
    without a mean."""
    if metric is None or metric not in means:
        return NOT_MEASURED
    value = means[metric]
    return f"{100 * value:.2f}%" if metric in FRACTION_METRICS else f"{value:.2f}"


def beside_quality(columns: list[str], cells: list[str], ours: Callable[[str], str]) -> list[str]:
    """``cells`` (one per paper column) with ``ours(column)`` right after each quality column's."""
    out = []
    for column, cell in zip(columns, cells, strict=True):
        out += [cell, ours(column)] if column in QUALITY_METRICS else [cell]
    return out


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """A markdown table of string cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def our_cells(table: str, row: list[str], has_flops: bool,
              results: dict[str, list[dict]]) -> list[str]:
    """This repo's cells for one row of Table 1, 2 or 5 (Video Size, Method, Sparsity, ...)."""
    size, method, sparsity = video_size(row[0]), row[1], row[2]
    tokens = latent_tokens(size)
    cells = [NOT_MEASURED]
    if has_flops:
        tflops = row_tflops(size, sparsity)
        cells = [f"{tflops:.2f}T ({forward_tflops(tokens) / tflops:.2f}x)"]
    speeds = [(attention_speedup(results["attention"], tokens, *SELECTION[table]),
               "{0:.2f}x / {1:.2f}x")]
    if table in TRAINING_TABLES:
        speeds.append((train_step_speedup(results["train_step"], tokens),
                       "{0:.2f}x ({1:.2f} s / {2:.2f} s)"))
    for measured, fmt in speeds:
        if method in FULL_METHODS:
            cells.append(REFERENCE)
        elif method == "VMoBA" and measured is not None:
            cells.append(fmt.format(*measured))
        else:
            cells.append(NOT_MEASURED)
    return cells


def quality_row(table: str, columns: list[str], row: list[str],
                quality: dict[QualityKey, dict[str, float]]) -> list[str]:
    """A paper row with our quality cell (from the row's ``--quality`` means) beside each of its
    quality cells."""
    means = quality.get(row_key(table, row), {})
    return beside_quality(columns, row, lambda column: quality_text(QUALITY_METRICS[column], means))


def main_table(table: str, data: dict, results: dict[str, list[dict]],
               quality: dict[QualityKey, dict[str, float]]) -> str:
    """Table 1, 2 or 5: the paper's columns with ours beside each quality column, then ours."""
    columns = data["columns"]
    ours = ["ours FLOPs", "ours attn speedup fwd / fwd+bwd"]
    ours += ["ours train-step speedup"] * (table in TRAINING_TABLES)
    flops = columns.index("FLOPs↓")
    rows = [quality_row(table, columns, row, quality)
            + our_cells(table, row, bool(row[flops]), results) for row in data["rows"]]
    return markdown_table(beside_quality(columns, columns, lambda c: f"ours {c}") + ours, rows)


def ablation_table(data: dict) -> str:
    """Table 3: its four sub-tables, with one column for ours (no ablation runs in this repo)."""
    parts = []
    for key in "abcd":
        sub = data[key]
        rows = [row + [NOT_MEASURED] for row in sub["rows"]]
        parts.append(f"### {sub['caption']}\n\n" + markdown_table(sub["columns"] + ["ours"], rows))
    return "\n\n".join(parts)


def header(sources: dict[str, str]) -> str:
    """What each of our columns is and where it came from."""
    filled = ", ".join(f"{column} <- {metric}"
                       for column, metric in QUALITY_METRICS.items() if metric is not None)
    return "\n".join([
        "# The paper's tables beside this repo's numbers",
        "",
        ("Made by `python -m eval.paper_tables`; paper cells verbatim from"
         " `eval/paper_tables.json`. Ours:"),
        "",
        ("- **ours FLOPs**: `eval.flops.forward_tflops`, one forward pass of Wan 2.1 1.3B (spec"
         " section 7): full attention when Sparsity is '-', else block-sparse at density ="
         " Sparsity with the setting's 1D/2D/3D blocks (sparse baselines priced the same way);"
         " x = full / row."),
        ("- **ours attn speedup fwd / fwd+bwd**: dense cuDNN time / VMoBA time of one 1D+2D+3D"
         " layer cycle, fastest backend per kind, on VMoBA rows with the same tokens and selection"
         " (Table 1 top-k + query_head, Tables 2 and 5 threshold + head_global); from"
         f" {sources['attention']}."),
        ("- **ours train-step speedup**: full-attention / VMoBA seconds per training step at the"
         f" row's tokens (VMoBA rows); from {sources['train_step']}."),
        ("- **ours** beside a quality column of the paper: the mean of a `python -m eval.run`"
         f" output given for the row with `--quality TABLE:SIZE:METHOD=FILE`, {filled}; fractions"
         f" x100 as percents like the paper, psnr in dB. Given for {sources['quality']}."),
        ("- **ours TextConsis↑**: always not measured: the paper's TextConsis is VBench's"
         " overall_consistency (ViCLIP on the whole clip), which this repo does not compute."),
        "- **reference**: a full-attention row, what the speedups are measured against.",
        "- Table 3 (ablations): this repo has no ablation runs.",
    ])


def render(paper: dict, results: dict[str, list[dict]],
           quality: dict[QualityKey, dict[str, float]], sources: dict[str, str]) -> str:
    """The whole markdown document: header, then Tables 1, 2, 3 and 5."""
    sections = [header(sources)]
    for table in ("table1", "table2", "table3", "table5"):
        data = paper[table]
        body = (ablation_table(data) if table == "table3"
                else main_table(table, data, results, quality))
        sections.append(f"## {data['caption']}\n\n{body}")
    return "\n\n".join(sections) + "\n"


def load_records(path: Path) -> tuple[list[dict], str]:
    """(records, where they came from) of a JSON list file; ([], 'absent') when there is none."""
    if not path.exists():
        return [], f"`{path}` (absent)"
    return json.loads(path.read_text(encoding="utf-8")), f"`{path}`"


def load_quality(specs: list[str],
                 paper: dict) -> tuple[dict[QualityKey, dict[str, float]], str]:
    """({row key: metric means}, where they came from) of the ``--quality`` specs; ValueError for
    a bad key, a row given twice, or a file that is missing or no eval.run output."""
    quality, sources = {}, []
    for spec in specs:
        key, path = parse_quality(spec, paper)
        if key in quality:
            raise ValueError(f"--quality {spec!r}: row {':'.join(key)} given twice")
        if not path.is_file():
            raise ValueError(f"--quality {spec!r}: no such file {path}")
        quality[key] = metric_means(path)
        sources.append(f"{' '.join(key)} (`{path}`)")
    return quality, "; ".join(sources) or "no row"


def load_paper() -> dict:
    """The paper's tables as transcribed in ``eval/paper_tables.json``: {"table1": {"caption",
    "columns", "rows": [[cell, ...], ...]}, ..., "table3": {"caption", "a".."d": sub-tables}}."""
    return json.loads(PAPER_JSON.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.paper_tables",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("eval/results"),
                        help="folder with attention_h200.json and train_step_h200.json")
    parser.add_argument("--out", type=Path, default=Path("eval/results/paper_tables.md"),
                        help="markdown file to write (the text is printed too)")
    parser.add_argument("--quality", action="append", default=[],
                        metavar="TABLE:SIZE:METHOD=SCORES.json",
                        help="eval.run output for one row of Table 1, 2 or 5, e.g."
                             " table2:93x576x1024:VMoBA=scores.json (repeatable)")
    args = parser.parse_args(argv)
    paper = load_paper()
    try:
        quality, quality_source = load_quality(args.quality, paper)
    except ValueError as error:
        parser.error(str(error))
    files = {"attention": args.results / "attention_h200.json",
             "train_step": args.results / "train_step_h200.json"}
    loaded = {name: load_records(path) for name, path in files.items()}
    sources = {name: source for name, (_, source) in loaded.items()} | {"quality": quality_source}
    text = render(paper, {name: records for name, (records, _) in loaded.items()}, quality, sources)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
