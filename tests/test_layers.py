"""The packages are layers: every import of a tidpo module (also those inside functions) goes to
the same or a lower layer, and no module is part of an import cycle.

Run alone with ``python -m pytest tests/test_layers.py``; it reads the source (``ast``) and
imports nothing of tidpo.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "tidpo"

LAYERS = [
    ("tidpo.errors", "tidpo.extras", "tidpo.fileio"),
    ("tidpo.functional",),
    ("tidpo.data",),
    ("tidpo.training",),
    ("tidpo.analysis",),
    ("tidpo.studies",),
    ("tidpo.report",),
    ("tidpo.cli",),
]
"""Bottom to top. The package root (``tidpo/__init__.py``, ``__main__``) sits above them all."""


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return len(LAYERS)  # tidpo, tidpo.__main__


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The tidpo modules ``path`` imports, at any depth of the file (functions included).

    ``from tidpo.x import y`` imports module ``tidpo.x.y`` when that is a module, else (a name
    defined in it) module ``tidpo.x``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tidpo"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tidpo"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        graph[module] = {m for m in _imports(path, set(files)) if m in files and m != module}
    return graph


def test_imports_go_down_the_layers() -> None:
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in graph.items()
        for t in targets
        if _layer(t) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_functional_imports_nothing_of_tidpo() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("tidpo.functional"):
            assert all(t.startswith("tidpo.functional") for t in targets), (module, targets)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: every component is a single module.

    A package's ``__init__`` re-exporting its own modules is not a cycle of modules: edges from
    a module to its own package are left out (importing ``tidpo.data.load`` runs
    ``tidpo/data/__init__.py`` first either way)."""
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in _graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_every_package_says_what_it_owns() -> None:
    for init in ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 15, init


def test_files_are_short_enough_to_read() -> None:
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}  # fmt: skip
    assert not long, long
