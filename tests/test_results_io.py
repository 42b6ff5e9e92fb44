"""eval.results_io: result files named by the device that measured them, headed by their origin."""

import json

import pytest
import torch

from eval.results_io import device_tag, write_results


@pytest.mark.parametrize(
    "name, gpus, tag",
    [("NVIDIA H200", 1, "h200"), ("NVIDIA H200", 2, "h200x2"),
     ("NVIDIA A100-SXM4-80GB", 1, "a100-sxm4-80gb"), ("NVIDIA GeForce RTX 4090", 1, "geforce-rtx-4090")],
)
def test_device_tag_names_the_gpu_model(monkeypatch, name, gpus, tag):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: name)
    assert device_tag(gpus) == tag


def test_device_tag_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_tag(4) == "cpu"


def test_write_results_heads_the_table_with_its_origin(tmp_path):
    records = [{"tokens": 1, "fwd_ms": 2.0}]
    write_results(tmp_path, "bench_cpu", records, module="eval.bench.x", title="T", commit="abc",
                  table="| a |\n")
    assert json.loads((tmp_path / "bench_cpu.json").read_text()) == records
    text = (tmp_path / "bench_cpu.md").read_text()
    assert text.startswith("# T\n\nCommand: `python -m eval.bench.x")
    assert "commit `abc`" in text and text.endswith("| a |\n")
