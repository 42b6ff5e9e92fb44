"""The import graph of the product: data -> vmoba -> eval, every arrow pointing down, no circle.

Read from the source (every ``import``, at module level or inside a function), so an import that
only runs on some path counts too; and checked at run time for the training entry points.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "vmoba", "eval")

# module prefix -> prefixes it must never import
FORBIDDEN = {
    "data": ("vmoba", "eval"),
    "vmoba": ("eval",),
    "vmoba.attention": ("vmoba.model", "vmoba.parallel", "vmoba.flow_matching", "vmoba.cli"),
    "vmoba.parallel": ("vmoba.model", "vmoba.flow_matching", "vmoba.cli"),
    "vmoba.model": ("vmoba.flow_matching", "vmoba.cli"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Modules of this repo that the file at ``path`` (module ``module``, by default its name in
    the repo) imports; ``from a import b`` gives ``a.b`` when that module exists, else ``a``."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {
        _module_name(path): _imports(path)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_import_points_back_up():
    violations = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for prefix, forbidden in FORBIDDEN.items()
        if _within(module, prefix)
        for target in targets
        if any(_within(target, bad) for bad in forbidden)
    ]
    assert not violations, "\n".join(violations)


def test_no_import_circle():
    """Module level, between this repo's modules (a package's ``__init__`` counts as the package)."""
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or _within(module, target):  # a package's own __init__
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "planted.py"
    source.write_text(
        "def f():\n    from eval.run import main\n    import vmoba.model\n"
        "from .latent_cache import INDEX\n"
    )
    assert _imports(source, "data.planted") == {"eval.run", "vmoba.model", "data.latent_cache"}


def _eval_modules_after(*statements: str) -> list[list[str]]:
    """The ``eval`` modules loaded by one fresh interpreter after each of ``statements`` in turn."""
    report = (
        "print(json.dumps(sorted(m for m in sys.modules if m == 'eval' or m.startswith('eval.'))))"
    )
    code = "import json, sys\n" + "".join(f"{s}\n{report}\n" for s in statements)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(statements):]]


def test_training_entry_points_load_no_eval_module():
    training, then_eval = _eval_modules_after(
        "import vmoba, vmoba.cli, vmoba.flow_matching", "import eval.callbacks"
    )
    assert training == []
    assert "eval.run" in then_eval  # the check sees an eval import
