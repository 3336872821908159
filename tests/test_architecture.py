"""The house rules of ARCHITECTURE.md section 1, checked on the source with ``ast``.

Every import counts as an edge, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``): ``import a.b`` and ``from a.b import c`` are edges to ``a.b`` (to ``a.b.c`` when that is a
module), and importing ``a.b.c`` also runs the package ``a.b``'s ``__init__``, so it is an edge to every
package above the target too (except the importer's own packages, which are already running).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_TOP = {"tests", "benchmarks", "scripts"}

# (importing top-level package, imported top-level packages it must not reach)
FORBIDDEN = [
    ("visualization", {"engine", "experiment_runner"}),
    ("models", {"dataio", "metrics", "engine"}),
    ("metrics", {"engine"}),
    ("engine", {"experiment_runner", "visualization"}),
]


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every project module outside tests, benchmarks and scripts."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP_TOP or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _nearest_module(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = {_nearest_module(n, modules) for n in names}
    return {n for n in found if n and n != module}


def import_graph() -> dict[str, set[str]]:
    """Edges module -> project modules it imports (see the module docstring)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(module, node, modules)
        own = {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}
        parents = {t.rsplit(".", i)[0] for t in edges for i in range(1, t.count(".") + 1)}
        graph[module] = edges | {p for p in parents if p in modules and p not in own}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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


def test_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("source,forbidden", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_imports_flow_one_way(source, forbidden):
    bad = sorted(f"{m} -> {t}" for m, targets in import_graph().items() if m.split(".")[0] == source
                 for t in targets if t.split(".")[0] in forbidden)
    assert bad == []


def test_graph_counts_function_level_and_type_checking_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import X\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph()
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
