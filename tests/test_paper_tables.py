"""eval.paper_tables: the paper's tables beside ours, nothing filled in that was not measured."""

import json

import pytest

from eval.flops import forward_tflops
from eval.paper_tables import NOT_MEASURED, PAPER_JSON, main

pytestmark = pytest.mark.skipif(not PAPER_JSON.exists(),
                                reason=f"paper tables not found at {PAPER_JSON}")
VMOBA_55K = "93×576×1024 (55K Tokens) | VMoBA"


def _render(tmp_path, capsys, *extra: str) -> str:
    """Run the command with results from tmp_path; check the file equals what it printed."""
    out = tmp_path / "tables.md"
    main(["--results", str(tmp_path), "--out", str(out), *extra])
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    return printed


def _row(text: str, start: str) -> list[str]:
    """The cells of the first markdown row that starts with ``start``."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _attention_record(kind: str, fwd_ms: float, fwd_bwd_ms: float, backend: str = "varlen",
                      tokens: int = 55_296, select: str = "threshold",
                      scope: str = "head_global") -> dict:
    """One benchmark record; dense cuDNN takes 30 ms forward, 120 ms forward+backward."""
    return {"tokens": tokens, "layer_kind": kind, "select": select, "scope": scope,
            "backend": backend, "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms,
            "dense_cudnn_fwd_ms": 30.0, "dense_cudnn_fwd_bwd_ms": 120.0}


def test_captions_and_not_measured_without_results(tmp_path, capsys):
    text = _render(tmp_path, capsys)
    paper = json.loads(PAPER_JSON.read_text())
    for table in ("table1", "table2", "table3", "table5"):
        assert f"## {paper[table]['caption']}" in text
    for sub in "abcd":
        assert paper["table3"][sub]["caption"] in text
    assert "table4" not in text and paper["table4"]["caption"] not in text
    vmoba = _row(text, VMOBA_55K)
    assert vmoba[-3:] == [NOT_MEASURED] * 3  # attention, train step, quality
    assert "(absent)" in text


def test_flops_column_is_forward_tflops(tmp_path, capsys):
    row = _row(_render(tmp_path, capsys), VMOBA_55K)
    ours = forward_tflops(55_296, attention="vmoba", blocks=(8, 48, 72), density=0.19)
    full = forward_tflops(55_296)
    assert row[10] == f"{ours:.2f}T ({full / ours:.2f}x)"


def test_attention_ratio_from_results(tmp_path, capsys):
    records = [_attention_record("1d", 10.0, 40.0), _attention_record("2d", 20.0, 60.0),
               _attention_record("3d", 30.0, 80.0),
               _attention_record("3d", 60.0, 50.0, backend="other")]
    records += [_attention_record(kind, 30.0, 60.0, tokens=32_760, select="topk",
                                  scope="query_head") for kind in ("1d", "2d", "3d")]
    (tmp_path / "attention_h200.json").write_text(json.dumps(records))
    text = _render(tmp_path, capsys)
    # fastest backend per kind: fwd 10 + 20 + 30 = 60 ms, fwd+bwd 40 + 60 + 50 = 150 ms
    assert _row(text, VMOBA_55K)[11] == "1.50x / 2.40x"
    assert _row(text, "81×480×832 (33K Tokens) | VMoBA")[11] == "1.00x / 2.00x"  # Table 1: top-k
    # other tokens, or the same tokens with another selection (Table 5 trains with threshold): none
    assert _row(text, "141×480×832 (56K Tokens) | VMoBA")[11] == NOT_MEASURED
    assert _row(text, "Origin 81×480×832 (33K Tokens) | VMoBA")[11] == NOT_MEASURED


def test_attention_ratio_needs_every_kind(tmp_path, capsys):
    (tmp_path / "attention_h200.json").write_text(json.dumps([_attention_record("1d", 10.0, 40.0)]))
    assert _row(_render(tmp_path, capsys), VMOBA_55K)[11] == NOT_MEASURED


def test_train_step_and_quality_from_results(tmp_path, capsys):
    steps = [{"tokens": 55_296, "attention": a, "step_s": s, "peak_mem_gib": 50.0, "density": d}
             for a, s, d in (("full", 9.0, 1.0), ("vmoba", 4.0, 0.2), ("vmoba", 3.0, 0.2))]
    (tmp_path / "train_step_h200.json").write_text(json.dumps(steps))
    metrics = tmp_path / "quality.json"
    metrics.write_text(json.dumps([{"tokens": 55_296, "attention": "vmoba",
                                    "means": {"TextConsis": 25.5}}]))
    row = _row(_render(tmp_path, capsys, "--metrics", str(metrics)), VMOBA_55K)
    assert row[12:] == ["3.00x (9.00 s / 3.00 s)", "TextConsis 25.5"]
