"""Small typed helpers of the dock, and the panels' names: a panel (a magicgui ``Container``, a
sequence of its widgets) must not hide a ``Container`` member with a control or a handler of
its own (a control named ``index`` hides ``Container.index``, which ``Container.remove`` and
the panels' layouts use; a ``show(result)`` hides ``Widget.show``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from napari_histoclip._settings import DockSettings

PACKAGE = Path(__file__).resolve().parents[2] / "napari_histoclip"


def hidden_members(tree: ast.Module, members: set[str]) -> list[str]:
    """``self.NAME = ...`` or ``def NAME`` in a class deriving from ``Container`` where NAME is
    one of ``members``, as "Class.NAME"."""
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if "Container" not in (ast.unparse(b) for b in cls.bases):
            continue
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef) and node.name in members:
                found.append(f"{cls.name}.{node.name}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in members):
                found.append(f"{cls.name}.{node.attr}")
    return found


def test_the_scan_finds_a_hidden_member() -> None:
    tree = ast.parse("class P(Container):\n    def __init__(self):\n        self.index = 1\n        self.ok = 2\n"
                     "    def show(self, result):\n        pass\n")
    assert sorted(hidden_members(tree, {"index", "show"})) == ["P.index", "P.show"]


def test_no_panel_hides_a_container_member() -> None:
    from magicgui.widgets import Container

    members = {n for n in dir(Container) if not n.startswith("_")}
    found = {
        str(path.relative_to(PACKAGE)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if (names := hidden_members(ast.parse(path.read_text(encoding="utf-8")), members))
    }
    assert found == {}


def test_chosen_path(qtbot) -> None:
    from magicgui.types import FileDialogMode
    from magicgui.widgets import FileEdit

    from napari_histoclip._widgets._paths import chosen_path

    edit = FileEdit(label="Index", mode=FileDialogMode.EXISTING_DIRECTORY, value=None)
    assert chosen_path(edit) is None  # magicgui shows it as "."
    edit.value = Path("/data/index")
    assert chosen_path(edit) == Path("/data/index")
    several = FileEdit(label="Slides", mode=FileDialogMode.EXISTING_FILES, value=(Path("/a.svs"), Path("/b.svs")))
    with pytest.raises(TypeError, match="Slides: a several-files chooser"):
        chosen_path(several)


def test_settings_updated_changes_only_the_text_choices_given() -> None:
    saved = DockSettings(model="a", model_other="b", index="/i", slide_mpp={"f": 0.5})
    changed = saved.updated(model="c", index=None)
    assert changed == DockSettings(model="c", model_other="b", index="", slide_mpp={"f": 0.5})
    with pytest.raises(TypeError, match=r"\['slide_mpp'\] are not text choices"):
        saved.updated(slide_mpp="0.25")
