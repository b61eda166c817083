"""The shape of the code, held by the test suite (issue 10): small modules, short functions, no
import cycle, no store method that nothing calls. These read the source, not the clock."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"

#: modules that are data tables (code lists from the standards), exempt from the size limit
DATA_TABLES = {"engine/x12/codes.py"}
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if "migrations" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_is_over_the_limit() -> None:
    over = [
        f"{_rel(p)}: {n} lines"
        for p in _sources()
        if _rel(p) not in DATA_TABLES
        and (n := p.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES
    ]
    assert over == [], f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_function_is_over_the_limit() -> None:
    over = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    over.append(f"{_rel(path)}:{node.lineno} {node.name} ({length} lines)")
    assert over == [], f"functions over {MAX_FUNCTION_LINES} lines: {over}"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    imported = sorted(graph.find_modules_directly_imported_by(child))
                    work.append((child, iter(imported)))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("engine")
    finally:
        sys.path.remove(str(ROOT))
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def _store_methods() -> list[str]:
    from engine.store import SqlMessageStore

    names = []
    for name, member in inspect.getmembers(SqlMessageStore):
        if name.startswith("_") or not callable(member):
            continue
        module = getattr(member, "__module__", "") or ""
        if module.startswith("engine.store"):
            names.append(name)
    return sorted(names)


@pytest.mark.parametrize("name", _store_methods())
def test_every_store_method_is_called_outside_the_tests(name: str) -> None:
    """A store method only tests call is dead code: the engine, its CLI or its API must use it."""
    use = re.compile(rf"\.{re.escape(name)}\b")
    definition = re.compile(rf"\bdef {re.escape(name)}\b")
    callers = [
        _rel(path)
        for path in ENGINE.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if use.search(line) and not definition.search(line)
    ]
    assert callers, f"SqlMessageStore.{name} is called nowhere in engine/"
