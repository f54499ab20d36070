"""The package's import graph has no circles: arrows point down only.

Every module of ``src/neuralworld`` is parsed with ``ast``; every import counts,
the ones inside functions too (a lazy import still makes two modules that cannot
be understood apart). A package is its ``__init__``: ``from neuralworld.x import y``
is an edge to ``neuralworld.x``, and to ``neuralworld.x.y`` where that is a module.
Importing ``neuralworld.x.y`` is not counted as importing the package
``neuralworld.x`` too, so an ``__init__`` that re-exports its own submodules is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import neuralworld

ROOT = Path(neuralworld.__file__).parent
PACKAGE = "neuralworld"

def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from the source alone."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                # `import a.b.c` names a.b.c; keep the longest prefix that is one of ours
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "neuralworld.session" in graph and "neuralworld.model.dynamics" in graph
    assert "neuralworld.model.dynamics" in graph["neuralworld.session"]  # `from neuralworld.model.dynamics import`
    assert "neuralworld.bundle" in graph["neuralworld"]  # imported inside __getattr__


def test_circles_are_found():
    # the checker itself: a lazy import inside a function closes a circle
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_a_function_level_import_counts(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("from neuralworld.sub import low\n")
    (pkg / "base.py").write_text("import os\n")
    (pkg / "sub" / "__init__.py").write_text("from .low import f\n")  # re-export: not a circle
    (pkg / "sub" / "low.py").write_text("def f():\n    from .. import base\n")
    graph = import_graph(pkg)
    assert graph["neuralworld.top"] == {"neuralworld.sub", "neuralworld.sub.low"}
    assert graph["neuralworld.sub"] == {"neuralworld.sub.low"}
    assert graph["neuralworld.sub.low"] == {"neuralworld", "neuralworld.base"}  # `from .. import base`
    assert graph["neuralworld.base"] == set()
    assert circles(graph) == []
    (pkg / "sub" / "low.py").write_text("def f():\n    import neuralworld.top\n")  # inside a function
    assert circles(import_graph(pkg)) == [["neuralworld.sub", "neuralworld.sub.low", "neuralworld.top"]]


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles (arrows must point down only): " + "; ".join(" <-> ".join(c) for c in found)
