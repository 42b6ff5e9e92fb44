"""eval.paper_tables: the paper's tables beside ours, nothing filled in that was not measured."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval.flops import forward_tflops
from eval.paper_tables import NOT_MEASURED, load_paper, main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "eval/results/paper_tables.md"
VMOBA_55K = "93×576×1024 (55K Tokens) | VMoBA"
ATTN = "ours attn speedup fwd / fwd+bwd"
OURS_QUALITY = ("ours PSNR↑", "ours TextConsis↑", "ours Dynamic↑", "ours BGConsis↑",
                "ours ImageQual↑", "ours SubConsist↑")


def _render(tmp_path, capsys, *extra: str) -> str:
    """Run the command with results from tmp_path; check the file equals what it printed."""
    out = tmp_path / "tables.md"
    main(["--results", str(tmp_path), "--out", str(out), *extra])
    printed = capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == printed
    return printed


def _error(tmp_path, capsys, *quality: str) -> str:
    """Run the command with these ``--quality`` specs; check it exits 2 having written nothing,
    and return what it printed to stderr."""
    out = tmp_path / "tables.md"
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), *(arg for spec in quality for arg in ("--quality", spec))])
    assert exit_info.value.code == 2
    assert not out.exists()
    return capsys.readouterr().err


def _cells(line: str) -> list[str]:
    """The stripped cells of one markdown table line."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _rows(text: str, table: str) -> list[dict[str, str]]:
    """{column: cell} of every row of the section of ``table`` ('Table 2')."""
    section = text.split(f"\n## {table}:")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    columns = _cells(lines[0])
    return [dict(zip(columns, _cells(line), strict=True)) for line in lines[1:]]


def _row(text: str, table: str, start: str) -> dict[str, str]:
    """{column: cell} of the first row of ``table`` whose cells start with ``start``."""
    return next(row for row in _rows(text, table) if " | ".join(row.values()).startswith(start))


def _attention_record(kind: str, fwd_ms: float, fwd_bwd_ms: float, backend: str = "varlen",
                      tokens: int = 55_296, select: str = "threshold",
                      scope: str = "head_global") -> dict:
    """One benchmark record; dense cuDNN takes 30 ms forward, 120 ms forward+backward."""
    return {"tokens": tokens, "layer_kind": kind, "select": select, "scope": scope,
            "backend": backend, "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms,
            "dense_cudnn_fwd_ms": 30.0, "dense_cudnn_fwd_bwd_ms": 120.0}


def _scores(path: Path, **metrics: float | str | None) -> str:
    """Write an eval.run output with these metric means (a str: unavailable for that reason)."""
    entries = {name: {"unavailable": value} if isinstance(value, str)
               else {"mean": value, "per_video": {"a.mp4": value}}
               for name, value in metrics.items()}
    path.write_text(json.dumps({"metrics": entries, "videos": ["a.mp4"], "skipped": {},
                                "settings": {"videos": "samples"}}))
    return str(path)


def test_clean_clone_needs_nothing_beside_the_repo(tmp_path):
    clone = tmp_path / "clone"  # nothing beside it: no ../shared
    shutil.copytree(REPO / "eval", clone / "eval", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(clone)}
    done = subprocess.run([sys.executable, "-m", "eval.paper_tables", "--out", "out.md"],
                          cwd=clone, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (clone / "out.md").read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")


def test_committed_tables_are_what_the_command_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "tables.md"
    main(["--out", str(out)])
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8"), (
        "eval/results/paper_tables.md is stale: run `python -m eval.paper_tables`")


def test_captions_and_not_measured_without_results(tmp_path, capsys):
    text = _render(tmp_path, capsys)
    paper = load_paper()
    for table in ("table1", "table2", "table3", "table5"):
        assert f"## {paper[table]['caption']}" in text
    for sub in "abcd":
        assert paper["table3"][sub]["caption"] in text
    assert "table4" not in text and paper["table4"]["caption"] not in text
    vmoba = _row(text, "Table 2", VMOBA_55K)
    assert [vmoba[c] for c in (ATTN, "ours train-step speedup")] == [NOT_MEASURED] * 2
    assert [vmoba[c] for c in OURS_QUALITY[1:]] == [NOT_MEASURED] * 5  # Table 2 has no PSNR
    assert "(absent)" in text and "Given for no row." in text


def test_flops_column_is_forward_tflops(tmp_path, capsys):
    row = _row(_render(tmp_path, capsys), "Table 2", VMOBA_55K)
    ours = forward_tflops(55_296, attention="vmoba", blocks=(8, 48, 72), density=0.19)
    full = forward_tflops(55_296)
    assert row["ours FLOPs"] == f"{ours:.2f}T ({full / ours:.2f}x)"


def test_attention_ratio_from_results(tmp_path, capsys):
    records = [_attention_record("1d", 10.0, 40.0), _attention_record("2d", 20.0, 60.0),
               _attention_record("3d", 30.0, 80.0),
               _attention_record("3d", 60.0, 50.0, backend="other")]
    records += [_attention_record(kind, 30.0, 60.0, tokens=32_760, select="topk",
                                  scope="query_head") for kind in ("1d", "2d", "3d")]
    (tmp_path / "attention_h200.json").write_text(json.dumps(records))
    text = _render(tmp_path, capsys)
    # fastest backend per kind: fwd 10 + 20 + 30 = 60 ms, fwd+bwd 40 + 60 + 50 = 150 ms
    assert _row(text, "Table 2", VMOBA_55K)[ATTN] == "1.50x / 2.40x"
    assert _row(text, "Table 1", "81×480×832 (33K Tokens) | VMoBA")[ATTN] == "1.00x / 2.00x"
    # other tokens, or the same tokens with another selection (Table 5 trains with threshold): none
    assert _row(text, "Table 2", "141×480×832 (56K Tokens) | VMoBA")[ATTN] == NOT_MEASURED
    assert _row(text, "Table 5", "Origin 81×480×832 (33K Tokens) | VMoBA")[ATTN] == NOT_MEASURED


def test_attention_ratio_needs_every_kind(tmp_path, capsys):
    (tmp_path / "attention_h200.json").write_text(json.dumps([_attention_record("1d", 10.0, 40.0)]))
    assert _row(_render(tmp_path, capsys), "Table 2", VMOBA_55K)[ATTN] == NOT_MEASURED


def test_train_step_from_results(tmp_path, capsys):
    steps = [{"tokens": 55_296, "attention": a, "step_s": s, "peak_mem_gib": 50.0, "density": d}
             for a, s, d in (("full", 9.0, 1.0), ("vmoba", 4.0, 0.2), ("vmoba", 3.0, 0.2))]
    (tmp_path / "train_step_h200.json").write_text(json.dumps(steps))
    row = _row(_render(tmp_path, capsys), "Table 2", VMOBA_55K)
    assert row["ours train-step speedup"] == "3.00x (9.00 s / 3.00 s)"


def test_quality_fractions_print_as_percents_and_psnr_in_db(tmp_path, capsys):
    scores = _scores(tmp_path / "s.json", psnr=16.004, background_consistency=0.9447,
                     subject_consistency=None, imaging_quality="needs weights musiq")
    text = _render(tmp_path, capsys, "--quality", f"table1:81x480x832:VMoBA={scores}")
    row = _row(text, "Table 1", "81×480×832 (33K Tokens) | VMoBA")
    assert (row["PSNR↑"], row["ours PSNR↑"]) == ("16.00", "16.00")
    assert (row["BGConsis↑"], row["ours BGConsis↑"]) == ("93.74%", "94.47%")
    assert row["ours SubConsist↑"] == row["ours ImageQual↑"] == NOT_MEASURED  # null, unavailable
    assert f"table1 81×480×832 VMoBA (`{scores}`)" in text


def test_text_consistency_is_never_filled(tmp_path, capsys):
    scores = _scores(tmp_path / "s.json", clip_score=0.31, text_consistency=0.28,
                     overall_consistency=0.27, dynamic_degree=0.5691)
    text = _render(tmp_path, capsys, "--quality", f"table2:93×576×1024:VMoBA={scores}")
    row = _row(text, "Table 2", VMOBA_55K)
    assert row["ours Dynamic↑"] == "56.91%"
    assert row["ours TextConsis↑"] == NOT_MEASURED


def test_quality_is_keyed_by_table_size_and_method(tmp_path, capsys):
    # Table 5's 81x480x832 VMoBA shares tokens and method with Table 1's; Table 2's 93x576x1024
    # FullAttn shares tokens with Pretrained Wan 2.1 and VMoBA in the same table
    origin = _scores(tmp_path / "origin.json", dynamic_degree=0.6935, subject_consistency=0.9792)
    full = _scores(tmp_path / "full.json", background_consistency=0.9469)
    text = _render(tmp_path, capsys, "--quality", f"table5:81x480x832:VMoBA={origin}",
                   "--quality", f"table2:93x576x1024:FullAttn={full}")
    filled = {(table, row["Video Size"], row["Method"])
              for table in ("Table 1", "Table 2", "Table 5") for row in _rows(text, table)
              if any(row.get(column, NOT_MEASURED) != NOT_MEASURED for column in OURS_QUALITY)}
    assert filled == {("Table 5", "Origin 81×480×832 (33K Tokens)", "VMoBA"),
                      ("Table 2", "93×576×1024 (55K Tokens)", "FullAttn")}
    row = _row(text, "Table 5", "Origin 81×480×832 (33K Tokens) | VMoBA")
    assert (row["ours Dynamic↑"], row["ours SubConsist↑"]) == ("69.35%", "97.92%")
    row = _row(text, "Table 2", "93×576×1024 (55K Tokens) | FullAttn")
    assert row["ours BGConsis↑"] == "94.69%"


@pytest.mark.parametrize("key, message", [
    ("table4:93x576x1024:VMoBA", "unknown table 'table4'; valid: table1, table2, table5"),
    ("table2:81x480x832:VMoBA",
     "unknown video size of table2 '81×480×832'; valid: 93×576×1024, 141×480×832"),
    ("table2:93x576x1024:SVG", "unknown method of table2 at 93×576×1024 'SVG'; valid: Pretrained"
                               " Wan 2.1, FullAttn, + DiTFastAttn, + SVG, MoBA, VMoBA"),
    ("table1:81x480x832:Pretrained Wan 2.1", "valid: FullAttn, DiTFastAttn, SVG, MoBA, VMoBA"),
    ("table2:VMoBA", "--quality expects TABLE:SIZE:METHOD=FILE"),
])
def test_bad_quality_key_names_the_choices(tmp_path, capsys, key, message):
    scores = _scores(tmp_path / "s.json", psnr=20.0)
    assert message in _error(tmp_path, capsys, f"{key}={scores}")


@pytest.mark.parametrize("content, message", [
    ({"metrics": {"background_consistency": {"mean": 94.47}}}, "is not a fraction in [0, 1]"),
    ([{"tokens": 55_296, "means": {}}], "not an eval.run output"),
    ("{", "not JSON"),
    (None, "no such file"),
])
def test_bad_quality_file(tmp_path, capsys, content, message):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert message in _error(tmp_path, capsys, f"table2:93x576x1024:VMoBA={path}")


def test_same_row_twice_is_an_error(tmp_path, capsys):
    scores = _scores(tmp_path / "s.json", psnr=20.0)
    error = _error(tmp_path, capsys, f"table1:81x480x832:VMoBA={scores}",
                   f"table1:81×480×832:VMoBA={scores}")
    assert "row table1:81×480×832:VMoBA given twice" in error
