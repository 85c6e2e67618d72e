"""Refine with napari's own brush as a pathologist meets it (issue 21, napari item 1).

The dock comes from Plugins > HistoCLIP, the slide from the plugin's reader; strokes are real
mouse events on the canvas at the brush size napari gives a new Labels layer (10 px), never a
size the test picks. ``test-tiny`` on CMU-1-Small-Region.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support import mouse
from tests.support.dock_helpers import slide_dock

pytestmark = pytest.mark.gui
MAP = "CMU-1-Small-Region: class map"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


def click(qtbot, viewer, layer, cell: tuple[int, int], value: int) -> None:
    """One click of napari's brush with label ``value`` on the class-map pixel ``cell``; the
    brush size is left as it is."""
    layer.selected_label = value
    widget = mouse._prepare(qtbot, viewer, layer, "paint")
    viewer.reset_view()
    qtbot.wait(mouse.STEP_MS)
    pos = mouse.data_to_canvas(viewer, layer, cell)
    mouse._send(widget, "move", pos, held=False)
    qtbot.wait(mouse.STEP_MS)
    mouse._send(widget, "press", pos, held=True)
    qtbot.wait(mouse.STEP_MS)
    mouse._send(widget, "release", pos, held=False)
    qtbot.wait(mouse.STEP_MS)


def labelled(qtbot, viewer, dock, backend, slide: Path):
    """The plugin-path dock on the module's backend (its embeddings reused), ``slide`` opened and
    labelled in the Zero-shot tab; returns the class map."""
    dock = slide_dock(dock, viewer, backend, slide, "test-tiny")
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    return viewer.layers[MAP]


def test_default_brush_marks_one_tile_and_never_background(local_backend, plugin_viewer, plugin_dock,
                                                           cmu_slide: Path, qtbot, notes) -> None:
    viewer, dock = plugin_viewer, plugin_dock
    layer = labelled(qtbot, viewer, dock, local_backend, cmu_slide)
    assert not notes.errors, notes.errors
    zero_shot = np.array(layer.data)
    labels = list(layer.metadata["labels"])
    dock.tabs.setCurrentWidget(dock.refine.native)  # the Refine tab arms the map
    assert layer.brush_size == 1 and layer.mode == "paint"

    # A tissue tile inside the tissue (its neighbours tissue too), painted another class.
    tissue = np.argwhere(zero_shot > 0)
    cell = next((int(r), int(c)) for r, c in tissue
                if np.all(zero_shot[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] > 0))
    value = 1 if zero_shot[cell] != 1 else 2
    click(qtbot, viewer, layer, cell, value)
    assert not notes.errors, notes.errors
    assert dock.refine.slides[str(cmu_slide)].marks == {cell: labels[value - 1]}
    changed = np.argwhere(np.asarray(layer.data) != zero_shot)
    assert [tuple(map(int, rc)) for rc in changed] == [cell]
    assert dock.refine.marks_label.value.startswith("1 marked tile")

    # Background: no mark, nothing painted.
    background = tuple(int(v) for v in np.argwhere(zero_shot == 0)[0])
    click(qtbot, viewer, layer, background, value)
    assert np.asarray(layer.data)[background] == 0
    assert len(dock.refine.slides[str(cmu_slide)].marks) == 1


@pytest.mark.parametrize("size", [3, 10])
def test_a_wider_brush_marks_the_tissue_it_covers(local_backend, plugin_viewer, plugin_dock, cmu_slide: Path,
                                                  qtbot, notes, size: int) -> None:
    """A user who widens the brush paints many tiles: each tissue tile painted is a mark, the
    background under the brush stays background, and nothing raises (napari 0.9's masked paint
    atoms carry 1-D ``old_values``)."""
    viewer, dock = plugin_viewer, plugin_dock
    layer = labelled(qtbot, viewer, dock, local_backend, cmu_slide)
    zero_shot = np.array(layer.data)
    labels = list(layer.metadata["labels"])
    layer.brush_size = size
    # A tissue tile next to the background: the brush covers both.
    edge = next((int(r), int(c)) for r, c in np.argwhere(zero_shot > 0)
                if (zero_shot[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] == 0).any())
    value = len(labels)
    click(qtbot, viewer, layer, edge, value)
    assert not notes.errors, notes.errors
    data = np.asarray(layer.data)
    assert np.all(data[zero_shot == 0] == 0), "the brush painted background"
    marks = dock.refine.slides[str(cmu_slide)].marks
    painted = {(int(r), int(c)) for r, c in np.argwhere((data == value) & (zero_shot != value))}
    assert painted and set(marks) == painted
    assert set(marks.values()) == {labels[value - 1]}
    assert f"{len(marks)} marked tile" in dock.refine.marks_label.value
