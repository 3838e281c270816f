"""The package's layers: every import runs downward (import-linter's contract in pyproject.toml),
no modules import each other in a circle, and keras is imported at module top only where the
layers say (engine, and the Keras layers of nets)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "comp"
# Modules allowed to import keras (or a backend) at module top; everything else imports it inside functions.
KERAS_AT_TOP = ("comp.engine.", "comp.nets.layers", "comp.nets.lookahead")
HEAVY = {"keras", "tensorflow", "jax", "torch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def comp_modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imported_comp_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """Every comp module a module imports, at its top or inside functions (what import-linter sees)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comp"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("comp"))
    return {m for m in found if m in known}


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (the test extras install it)")
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_import_circle_counting_function_local_imports():
    trees = comp_modules()
    graph = {name: imported_comp_modules(tree, set(trees)) - {name} for name, tree in trees.items()}
    # A package imports its own __init__ when a submodule is imported: not an edge of the circle we mean.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_keras_imported_at_module_top_only_in_engine_and_nets_layers():
    offenders = []
    for name, tree in comp_modules().items():
        for node in tree.body:  # module top only: imports inside functions are how the rest stays light
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            if any(n.split(".")[0] in HEAVY for n in names) and not name.startswith(KERAS_AT_TOP):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def test_layer_test_sees_a_planted_circle(tmp_path):
    """The circle check is not vacuous: two modules importing each other inside functions are found."""
    a = ast.parse("def f():\n    from comp.x.b import g\n")
    b = ast.parse("def g():\n    from comp.x.a import f\n")
    known = {"comp.x.a", "comp.x.b"}
    assert imported_comp_modules(a, known) == {"comp.x.b"}
    assert imported_comp_modules(b, known) == {"comp.x.a"}
