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


MAX_PARAMETERS = 8  # per function or method in engine/, self/cls not counted: more settings travel as objects


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Positional (incl. positional-only), keyword-only, ``*args`` and ``**kwargs`` parameters, less a leading
    ``self`` or ``cls``."""
    args = node.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    count = len(positional) + len(args.kwonlyargs) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (positional[:1] in (["self"], ["cls"]))


def long_signatures(source: str, filename: str, limit: int = MAX_PARAMETERS) -> list[str]:
    """``file:line name (n parameters)`` of every function or method (nested ones too) in ``source`` taking more
    than ``limit`` parameters, in line order."""
    functions = [node for node in ast.walk(ast.parse(source, filename=filename))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [f"{filename}:{node.lineno} {node.name} ({parameter_count(node)} parameters)"
            for node in sorted(functions, key=lambda n: n.lineno) if parameter_count(node) > limit]


def test_parameter_counter_on_a_source_string():
    source = ("def six(a, b, /, c, *args, d, **kwargs):\n    pass\n"
              "class C:\n    def eight(self, a, b, c, d, e, f, g, h):\n        pass\n"
              "    @classmethod\n    def nine(cls, a, b, c, d, e, f, g, h, i):\n        pass\n"
              "async def also_nine(a, b, c, d, e, f, g, h, *, i=1):\n    def inner(*a, **k):\n        pass\n"
              "def static_nine(x, a, b, c, d, e, f, g, h):\n    pass\n")
    assert long_signatures(source, "x.py") == ["x.py:7 nine (9 parameters)", "x.py:9 also_nine (9 parameters)",
                                               "x.py:12 static_nine (9 parameters)"]
    assert long_signatures(source, "x.py", limit=5) == ["x.py:1 six (6 parameters)", "x.py:4 eight (8 parameters)",
                                                        "x.py:7 nine (9 parameters)", "x.py:9 also_nine (9 parameters)",
                                                        "x.py:12 static_nine (9 parameters)"]


def test_engine_functions_take_at_most_eight_parameters():
    found = [entry for path in sorted((ROOT / "engine").rglob("*.py"))
             for entry in long_signatures(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], f"take more than {MAX_PARAMETERS} parameters (group settings into a dataclass): {found}"


# Who may name a registered task, model kind, label kind or model family in code that decides on it (a comparison,
# a dict key, a match case): the task modules and the model registry own those names; dataio defines the label
# kinds (``LABEL_KINDS``, ``DatasetInfo``) and the label conventions, one of which is also called ``binary``.
# Everything else asks the registries. tests/, benchmarks/ and scripts/ are not scanned (SKIP_TOP).
NAME_OWNERS = ("engine/tasks/", "models/", "dataio/")


def registered_names() -> set[str]:
    """Task names, folder-evaluation names, model kinds, label kinds and model families of the live registries."""
    from dataio.types import LABEL_KINDS
    from engine.tasks import TASK_ENTRIES, folder_task_names
    from models import list_models, model_info

    infos = [model_info(name) for name in list_models()]
    entries = list(TASK_ENTRIES.values())
    return ({e.name for e in entries} | set(folder_task_names()) | set(LABEL_KINDS)
            | {k for e in entries for k in (*e.model_kinds, *e.label_kinds)} | {i.task for i in infos}
            | {i.family for i in infos})


def _literals(node: ast.AST) -> list[ast.Constant]:
    """``node`` itself when it is a constant, the constant items when it is a literal tuple, list or set."""
    if isinstance(node, ast.Constant):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e for e in node.elts if isinstance(e, ast.Constant)]
    return []


def _named_constants(node: ast.AST) -> list[ast.Constant]:
    """Constants that ``node`` decides on: compared (==, !=, is, in against a literal tuple/list/set), used as a
    dict literal key or ``dict(...)`` keyword, or matched by a ``case``."""
    if isinstance(node, ast.Compare):
        return [c for side in (node.left, *node.comparators) for c in _literals(side)]
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if isinstance(k, ast.Constant)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return [ast.Constant(value=k.arg, lineno=k.value.lineno) for k in node.keywords if k.arg]
    if isinstance(node, ast.match_case):
        return [p.value for p in ast.walk(node.pattern)
                if isinstance(p, ast.MatchValue) and isinstance(p.value, ast.Constant)]
    return []


def name_uses(source: str, filename: str, names: set[str]) -> list[str]:
    """``file:line 'name'`` of every place in ``source`` that decides on one of ``names`` (see
    :func:`_named_constants`), in line order."""
    uses = {(c.lineno, c.value) for node in ast.walk(ast.parse(source, filename=filename))
            for c in _named_constants(node) if isinstance(c.value, str) and c.value in names}
    return [f"{filename}:{line} {value!r}" for line, value in sorted(uses)]


def test_name_finder_on_a_source_string():
    source = ('if kind == "toy" or "toy" != other or x in ("a", "toy"):\n    pass\n'
              'table = {"toy": 1, "plain": 2}\nmore = dict(toy=1)\n'
              'match kind:\n    case "toy":\n        pass\n'
              'call("toy", task="toy")\nif x in kinds or y == "plain":\n    pass\n')
    assert name_uses(source, "x.py", {"toy"}) == ["x.py:1 'toy'", "x.py:3 'toy'", "x.py:4 'toy'", "x.py:6 'toy'"]


def test_no_task_kind_or_family_is_named_outside_engine_tasks_and_models():
    names = registered_names()
    assert {"brats_segmentation", "segmentation", "binary", "brats", "retinanet", "detseg3d"} <= names
    found = [use for path in sorted(project_modules().values())
             if not (rel := path.relative_to(ROOT).as_posix()).startswith(NAME_OWNERS)
             for use in name_uses(path.read_text(), rel, names)]
    assert found == [], f"decide on a task, kind or family name outside its owners (ask the registries): {found}"
