"""Region zero-shot and region search from the dock napari's Plugins menu makes, on shapes
drawn with the mouse (a rectangle and a polygon), on the real backend with ``test-tiny``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support.dock_helpers import open_slide
from tests.support.mouse import draw_polygon, draw_rectangle

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


def test_region_zero_shot_and_search_on_drawn_shapes(plugin_dock, plugin_viewer, qtbot, cmu_slide, tmp_path, notes) -> None:
    dock, viewer = plugin_dock, plugin_viewer
    open_slide(viewer, cmu_slide)
    viewer.reset_view()
    dock.captions.new_layer_button.native.click()
    shapes = viewer.layers[-1]
    assert shapes.name.startswith("CMU-1-Small-Region")

    draw_rectangle(qtbot, viewer, shapes, (400, 300), (1600, 1500))
    dock.zero_shot.scope.value = "selected shape"
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    region = viewer.layers["CMU-1-Small-Region: class map (region)"]
    assert (np.asarray(region.data) > 0).any()
    box_cells = int((np.asarray(region.data) > 0).sum())

    # A polygon, drawn after the rectangle, is the selected shape now: its region is labelled.
    viewer.reset_view()
    j = draw_polygon(qtbot, viewer, shapes, [(1650, 550), (1750, 1300), (2300, 950), (2100, 450)])
    assert set(shapes.selected_data) == {j}
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    region = viewer.layers["CMU-1-Small-Region: class map (region)"]
    labelled = np.argwhere(np.asarray(region.data) > 0)
    assert len(labelled) and int(len(labelled)) != box_cells
    world = labelled * np.asarray(region.scale) + np.asarray(region.translate)  # cell centres, µm
    rows = world[:, 0] / viewer.layers["CMU-1-Small-Region.svs"].scale[0]
    assert rows.min() > 1650 - 250 and rows.max() < 2300 + 250  # on the polygon, not the box

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    os.symlink(cmu_slide, cohort / cmu_slide.name)
    dock.search.folder.value = cohort
    dock.search.build_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    dock.search.exclude.value = False
    dock.search.k.value = 3
    for index in (j, 0):  # the polygon, then the rectangle
        shapes.selected_data = {index}
        viewer.layers.selection.active = shapes
        dock.search.results.clear()
        dock.search.shape_button.native.click()
        wait(qtbot, dock)
        assert not notes.errors, notes.errors
        assert 0 < dock.search.results.count() <= 3
