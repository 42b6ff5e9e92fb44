"""Layers at run time: importing the training entry points loads no module of ``eval`` (the layer
above ``vmoba``), whatever the import graph of the source says."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _eval_modules_after(statement: str) -> list[str]:
    """The ``eval`` modules loaded by a fresh interpreter that ran ``statement``."""
    code = (
        f"import json, sys; {statement}; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'eval' or m.startswith('eval.'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vmoba_imports_no_eval_module():
    assert _eval_modules_after("import vmoba, vmoba.cli, vmoba.flow_matching") == []


def test_the_check_sees_an_eval_import():
    assert "eval.run" in _eval_modules_after("import vmoba.cli, eval.callbacks")
