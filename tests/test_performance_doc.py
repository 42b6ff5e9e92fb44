"""docs/performance.md is what eval.performance writes from the committed result files."""

import json
from pathlib import Path

from eval.performance import attention_cycles, render

ROOT = Path(__file__).resolve().parents[1]


def test_committed_document_is_what_the_results_give():
    committed = (ROOT / "docs" / "performance.md").read_text()
    assert committed == render(ROOT / "eval" / "results"), (
        "docs/performance.md is stale: run python -m eval.performance and commit it"
    )


def test_absent_results_read_not_measured(tmp_path):
    text = render(tmp_path)
    assert "Not measured (`attention_h200.json` absent)." in text
    assert "|" not in text  # no table without records


def test_cycle_speedup_sums_the_fastest_backend_of_each_kind(tmp_path):
    def record(kind, backend, fwd, fwd_bwd):
        return {"tokens": 100, "select": "topk", "scope": "query_head", "layer_kind": kind,
                "backend": backend, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd, "density": 0.25,
                "dense_cudnn_fwd_ms": 10.0, "dense_cudnn_fwd_bwd_ms": 40.0, "blocks": 4,
                "dense_fa2_fwd_ms": 12.0, "dense_fa2_fwd_bwd_ms": 48.0, "selection_ms": 1.0,
                "extra_peak_mem_gib": 0.5}

    records = [record("1d", "a", 5, 10), record("1d", "b", 4, 20), record("2d", "a", 5, 20),
               record("3d", "a", 10, 20)]
    (cycle,) = attention_cycles(records)
    assert (cycle["fwd_ms"], cycle["fwd_bwd_ms"]) == (20, 50)  # 1d: "a" is faster fwd+bwd
    assert cycle["dense_cudnn_fwd_bwd_ms"] == 120
    assert attention_cycles(records[:2]) == []  # 2d and 3d unmeasured: no cycle
    (tmp_path / "attention_h200.json").write_text(json.dumps(records))
    assert "| 100 | topk+query_head | 0.250 | 20.0 / 50.0 | 30.0 / 120.0 | 1.50x / 2.40x |" in (
        render(tmp_path)
    )
