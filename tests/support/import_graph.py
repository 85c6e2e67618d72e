"""The import graph of our packages, read from the source with ``ast`` (nothing is imported).

A module's edges are its module-level imports: statements at the top of the module, inside
module-level ``if``/``try``/``with`` blocks and class bodies, but not inside functions (lazy
imports run on use, not at import) nor under ``if TYPE_CHECKING:`` (never run). Each import is
resolved to the module of ours it loads: ``from pkg import name`` is an edge to ``pkg.name``
when that is a module, else to ``pkg``; ``import a.b`` is an edge to ``a.b``. Imports of other
libraries are left out. A package ``__init__`` importing its own submodules is how a package
exposes its names, so those edges are left out too: only cycles between modules remain.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import networkx as nx


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` (folders under ``root``) by dotted name; a package is its ``__init__``."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module with this ``body`` is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _module_level(node.body)
        # function bodies (def, async def, lambda) run on call: their imports are lazy


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name ``from <...> import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def module_imports(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that importing ``module`` (source ``path``) imports at module level."""
    names = set(known)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _module_level(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _base(module, is_package, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
        for target in targets:
            while target and target not in names:  # ``import a.b.c`` of a non-module ``c``: its package
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


def import_graph(files: Mapping[str, Path]) -> nx.DiGraph:
    """Module -> module-level imports among ``files``, without a package's edges into itself."""
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for target in module_imports(module, path, files):
            if not (is_package and target.startswith(module + ".")):
                graph.add_edge(module, target)
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected component of more than one
    module, as its sorted names."""
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)
