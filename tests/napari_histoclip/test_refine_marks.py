"""Refine marks beyond the brush: shapes drawn with the mouse and given a class in the Caption
tab mark the tiles under them; painted marks survive a QuPath GeoJSON export and import.
``test-tiny`` on CMU-1-Small-Region, through the plugin dock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import mouse
from tests.support.dock_helpers import open_slide

pytestmark = [pytest.mark.gui, pytest.mark.slow]  # a shown viewer and zero-shot per test
MAP = "CMU-1-Small-Region: class map"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


def labelled(viewer, dock, qtbot, slide: Path, notes):
    open_slide(viewer, slide)
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    viewer.reset_view()
    return viewer.layers[MAP]


def test_a_drawn_rectangle_with_a_class_marks_the_tiles_under_it(plugin_viewer, plugin_dock, cmu_slide: Path,
                                                                 qtbot, notes) -> None:
    from napari_histoclip._slide import world_to_layer

    viewer, dock = plugin_viewer, plugin_dock
    layer = labelled(viewer, dock, qtbot, cmu_slide, notes)
    zero_shot = np.array(layer.data)
    labels = list(layer.metadata["labels"])
    # A 2 x 2 block of tissue tiles, and a class the zero-shot map gives none of them.
    block = next((r, c) for r, c in np.argwhere(zero_shot[:-1, :-1] > 0)
                 if (zero_shot[r:r + 2, c:c + 2] > 0).all() and len(set(zero_shot[r:r + 2, c:c + 2].ravel())) < len(labels))
    r0, c0 = (int(v) for v in block)
    under = {(r0 + i, c0 + j) for i in range(2) for j in range(2)}
    value = next(v for v in range(1, len(labels) + 1) if v not in {int(zero_shot[c]) for c in under})

    dock.captions.new_layer_button.native.click()
    shapes = viewer.layers[-1]
    # From a quarter tile inside the block's top-left tile to a quarter inside its bottom-right:
    # the four centres are inside, no other tile's is.
    corner = world_to_layer(shapes, layer.data_to_world((r0 - 0.25, c0 - 0.25)))
    opposite = world_to_layer(shapes, layer.data_to_world((r0 + 1.25, c0 + 1.25)))
    index = mouse.draw_rectangle(qtbot, viewer, shapes, corner, opposite)
    shapes.selected_data = {index}
    dock.captions.shapes.value = next(v for _, v in dock.captions._shapes_choices() if v.name == shapes.name)
    dock.captions.cls.value = labels[value - 1]
    dock.captions.cls_button.native.click()
    assert not notes.errors, notes.errors
    assert dock.refine.marks_of(str(cmu_slide)) == {cell: labels[value - 1] for cell in under}

    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    refined = viewer.layers[MAP]
    assert all(refined.data[cell] == value for cell in under), [refined.data[c] for c in under]
    assert f"{len(under)} marked tiles" in dock.refine.marks_label.value


def test_painted_marks_survive_a_qupath_export_and_import(plugin_viewer, plugin_dock, cmu_slide: Path, qtbot,
                                                          notes, tmp_path: Path) -> None:
    from napari_histoclip._geojson import REFINE_MARK

    viewer, dock = plugin_viewer, plugin_dock
    layer = labelled(viewer, dock, qtbot, cmu_slide, notes)
    zero_shot = np.array(layer.data)
    labels = list(layer.metadata["labels"])
    tissue = [tuple(int(v) for v in rc) for rc in np.argwhere(zero_shot > 0)]
    wanted = {}
    for k in range(len(labels)):  # three tiles per class, each not that class in zero-shot
        for cell in [c for c in tissue if zero_shot[c] != k + 1 and c not in wanted][:3]:
            wanted[cell] = labels[k]
    layer.brush_size = 1
    for cell, name in wanted.items():
        layer.paint(cell, labels.index(name) + 1)  # what the brush calls
    assert dock.refine.slides[str(cmu_slide)].marks == wanted
    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    before = np.array(viewer.layers[MAP].data)
    assert not np.array_equal(before, zero_shot)

    path = tmp_path / "marks.geojson"
    dock.export.reset_choices()
    dock.export.shapes.value = None
    dock.export.class_map.value = None
    dock.export.path.value = path
    dock.export.export_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    feats = json.loads(path.read_text())["features"]
    assert sorted(f["properties"]["classification"]["name"] for f in feats) == sorted(set(wanted.values()))
    assert all(f["properties"][REFINE_MARK] is True for f in feats)

    dock.refine.clear_button.native.click()
    wait(qtbot, dock)
    assert not dock.refine.marks_of(str(cmu_slide))
    np.testing.assert_array_equal(viewer.layers[MAP].data, zero_shot)

    n_layers = len(viewer.layers)
    dock.export.import_path.value = path
    assert dock.export.import_geojson() is None  # marks only: no shapes layer
    assert len(viewer.layers) == n_layers
    assert dock.refine.slides[str(cmu_slide)].marks == wanted
    assert f"{len(wanted)} tiles marked on the Refine tab" in notes.infos[-1]
    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    np.testing.assert_array_equal(viewer.layers[MAP].data, before)
