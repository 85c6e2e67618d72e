"""No import cycles between the modules of backend/, training/ and napari_histoclip/.

A cycle between modules of different responsibility means neither can be understood, tested or
loaded without the other; the shared piece belongs to the module that owns it.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from tests.support.import_graph import cycles, import_graph, module_files, module_imports

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "training", "napari_histoclip")


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_our_packages_have_no_import_cycle() -> None:
    files = module_files(ROOT, PACKAGES)
    assert {"backend.api", "training", "napari_histoclip._context"} <= set(files)  # the walk found them
    graph = import_graph(files)
    assert graph.has_edge("backend.local", "backend.resources")  # the parser sees real imports
    found = cycles(graph)
    assert found == [], "import cycles (module-level imports): " + "; ".join(" <-> ".join(c) for c in found)


def test_cycles_are_the_strongly_connected_components() -> None:
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("d", "a"), ("e", "f"), ("f", "e")])
    graph.add_node("g")
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert cycles(nx.DiGraph([("a", "b"), ("b", "c"), ("a", "c")])) == []


def test_a_planted_cycle_is_found_and_lazy_imports_are_not_edges(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import thing\nfrom . import b\n",
        "pkg/a.py": "import os\nfrom pkg.sub import c\nthing = 1\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                    "def f():\n    from pkg import a\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "try:\n    from ..b import f\nexcept ImportError:\n    f = None\nfrom .. import a\n",
    })
    files = module_files(tmp_path, ["pkg"])
    assert set(files) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    assert module_imports("pkg.b", files["pkg.b"], files) == set()  # TYPE_CHECKING and in a function
    assert module_imports("pkg.sub.c", files["pkg.sub.c"], files) == {"pkg.b", "pkg.a"}
    graph = import_graph(files)
    assert not graph.has_edge("pkg", "pkg.a")  # a package importing its own submodules
    assert cycles(graph) == [["pkg.a", "pkg.sub.c"]]
