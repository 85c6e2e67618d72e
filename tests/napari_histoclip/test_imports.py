"""Imports stay light: the plugin pulls no torch, the backend no Qt (fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

HEAVY_GUI = ("PyQt6", "PyQt5", "PySide6", "PySide2", "qtpy", "napari", "magicgui", "vispy")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(res.stdout.split())


def test_import_napari_histoclip_does_not_import_torch() -> None:
    mods = _modules_after("import napari_histoclip")
    assert "torch" not in mods
    assert not any(m.split(".")[0] in HEAVY_GUI for m in mods), "import napari_histoclip should be instant"


def test_reading_a_slide_does_not_import_torch(cmu_slide) -> None:
    mods = _modules_after(
        "from napari_histoclip._reader import get_reader\n"
        f"layers = get_reader({str(cmu_slide)!r})({str(cmu_slide)!r})\n"
        "assert layers[0][2] == 'image'"
    )
    assert "torch" not in mods and "open_clip" not in mods


def test_widget_modules_do_not_import_torch() -> None:
    """The dock's modules (without a backend made) load napari and Qt but never torch."""
    mods = _modules_after(
        "import os; os.environ.setdefault('QT_API', 'pyqt6')\n"
        "import napari_histoclip._widgets._main, napari_histoclip._widgets._zeroshot\n"
        "import napari_histoclip._widgets._caption, napari_histoclip._widgets._search\n"
        "import napari_histoclip._widgets._export, napari_histoclip._geojson, napari_histoclip._writer"
    )
    assert "torch" not in mods


def test_import_backend_does_not_import_qt() -> None:
    mods = _modules_after("import backend, backend.api, backend.errors, backend.slides")
    assert not any(m.split(".")[0] in HEAVY_GUI for m in mods)


def test_opening_the_dock_does_not_import_torch() -> None:
    """The dock lists the registry's models without loading any: torch waits for a first task.

    The widget class itself on a ``ViewerModel`` (no plugin path): a bare subprocess with no
    napari window or plugin manager, so that only the dock's own imports are counted."""
    mods = _modules_after(
        "import os; os.environ['QT_API'] = 'pyqt6'; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "from qtpy.QtWidgets import QApplication; app = QApplication([])\n"
        "from napari.components import ViewerModel\n"
        "from napari_histoclip._widgets._main import HistoclipWidget\n"
        "w = HistoclipWidget(ViewerModel())\n"
        "assert 'test-tiny' in w.model.choices and w.model.value == 'quiltnet-b32', w.model.choices"
    )
    assert "torch" not in mods
