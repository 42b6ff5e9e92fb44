"""eval.flops against every FLOPs cell of the paper's Tables 1, 2 and 5 and the spec's examples.

Every cell agrees within 0.2% (largest miss 0.11%, 81x320x512 MoBA) except five at 81x480x832
(32,760 tokens), tested as known mismatches at the error they measure: full attention 281.64T
against the paper's 282.64T (-0.35%; Table 1 FullAttn, Table 5 Pretrained and FullAttn), and
VMoBA 145.25T at density 0.31 (Table 1, -2.5%) and 121.51T at density 0.19 (Table 5, -18.4%)
against the paper's 149.00T in both tables.
"""

import pytest

from eval.flops import block_sparse_attention_flops, dense_attention_flops, forward_tflops, main
from eval.paper_tables import latent_tokens, load_paper, parse_tflops, row_tflops, video_size

_VMOBA = {"attention": "vmoba", "blocks": (8, 48, 72)}
# Cells this model does not reproduce, with the relative error it measures (see eval/flops.py).
KNOWN_MISMATCH = {
    ("table1", "81×480×832", "FullAttn"): -0.00354,
    ("table1", "81×480×832", "VMoBA"): -0.02516,
    ("table5", "81×480×832", "Pretrained Wan 2.1"): -0.00354,
    ("table5", "81×480×832", "FullAttn"): -0.00354,
    ("table5", "81×480×832", "VMoBA"): -0.18448,
}


def _flops_cells() -> list:
    """One param per FLOPs cell of eval/paper_tables.json: (table, video size, method, sparsity,
    cell text)."""
    paper = load_paper()
    cells = []
    for table in ("table1", "table2", "table5"):
        column = paper[table]["columns"].index("FLOPs↓")
        for row in paper[table]["rows"]:
            cell = (table, video_size(row[0]), row[1], row[2], row[column])
            cells.append(pytest.param(cell, id="-".join(cell[:4])))
    return cells


@pytest.mark.parametrize("cell", _flops_cells())
def test_paper_flops_cell(cell):
    table, size, method, sparsity, text = cell
    paper_tflops, paper_factor = parse_tflops(text)
    ours = row_tflops(size, sparsity)
    error = (ours - paper_tflops) / paper_tflops
    known = KNOWN_MISMATCH.get((table, size, method))
    if known is not None:
        assert abs(error - known) < 0.001
        return
    assert abs(error) < 0.002
    if paper_factor is not None:
        factor = forward_tflops(latent_tokens(size)) / ours
        # the paper rounds its factors to 2 decimals; each FLOPs number may be 0.2% off
        assert abs(factor - paper_factor) <= 0.005 + 0.004 * paper_factor


@pytest.mark.parametrize("tokens, blocks, density, expected", [
    (55_296, None, None, 705.02),
    (55_296, (8, 48, 72), 0.19, 248.73),
    (56_160, None, None, 724.97),
    (56_160, (12, 24, 36), 0.18, 248.40),
    (75_600, None, None, 1246.79),
    (75_600, (7, 40, 36), 0.31, 520.09),
])
def test_spec_worked_examples(tokens, blocks, density, expected):
    attention = "full" if blocks is None else "vmoba"
    tflops = forward_tflops(tokens, attention=attention, blocks=blocks, density=density)
    assert round(tflops, 2) == expected


@pytest.mark.parametrize("size, tokens", [
    ("81×480×832", 32_760), ("81×720×1280", 75_600), ("93×576×1024", 55_296),
    ("141×480×832", 56_160), ("81×320×512", 13_440),
])
def test_latent_tokens(size, tokens):
    assert latent_tokens(size) == tokens


def test_block_sparse_at_full_density_is_dense_plus_gate():
    gate = 2 * 1000 * 64 * 10
    assert block_sparse_attention_flops(1000, 64, 10, 1.0) == dense_attention_flops(1000, 64) + gate


def test_per_kind_density_is_linear():
    uniform = forward_tflops(55_296, density=0.2, **_VMOBA)
    assert forward_tflops(55_296, density=(0.2, 0.2, 0.2), **_VMOBA) == uniform
    assert forward_tflops(55_296, density=(0.1, 0.2, 0.3), **_VMOBA) == pytest.approx(uniform)


_DENSITY_RANGE = r"density must be in \(0, 1\]"


@pytest.mark.parametrize("tokens, kwargs, match", [
    (55_296, {"attention": "sparse"}, "attention must be one of"),
    (0, {}, "tokens must be a positive int"),
    (55_296.0, {}, "tokens must be a positive int"),
    (True, {}, "tokens must be a positive int"),
    (55_296, {"layers": -1}, "layers must be a positive int"),
    (55_296, {"text_len": 0}, "text_len must be a positive int"),
    (55_296, {"density": 0.2}, "only to attention='vmoba'"),
    (55_296, {"attention": "vmoba", "density": 0.2}, "needs both blocks"),
    (55_296, _VMOBA, "needs both blocks"),
    (55_296, {**_VMOBA, "density": 0.0}, _DENSITY_RANGE),
    (55_296, {**_VMOBA, "density": 1.5}, _DENSITY_RANGE),
    (55_296, {**_VMOBA, "density": (0.2, 0.2)}, "one per layer kind"),
    (55_296, {**_VMOBA, "blocks": (8, 48), "density": 0.2}, r"blocks must be \(n1d, n2d, n3d\)"),
    (55_296, {**_VMOBA, "blocks": (8, 0, 72), "density": 0.2}, r"blocks\[2d\] must be"),
    (100, {**_VMOBA, "blocks": (8, 48, 172), "density": 0.2}, r"blocks\[3d\] = 172 exceeds"),
    (55_296, {**_VMOBA, "density": 0.2, "layers": 31}, "divisible by 3"),
])
def test_bad_arguments(tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        forward_tflops(tokens, **kwargs)


def test_cli(capsys):
    main(["--tokens", "55296", "--attention", "vmoba", "--blocks", "8", "48", "72",
          "--density", "0.19"])
    assert capsys.readouterr().out == "248.73 TFLOPs\n"
    with pytest.raises(SystemExit):
        main(["--tokens", "55296", "--attention", "vmoba"])
