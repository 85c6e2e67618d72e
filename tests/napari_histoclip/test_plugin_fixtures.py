"""The plugin-path fixtures: the dock through napari's Plugins menu, shapes drawn with the mouse."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.dock_helpers import open_slide
from tests.support.mouse import draw_polygon, draw_rectangle

pytestmark = pytest.mark.gui


def test_the_plugin_dock_gets_a_proxy_viewer_and_its_own_backend(plugin_dock, plugin_viewer, local_backend_cls) -> None:
    from napari.utils._proxies import PublicOnlyProxy

    assert isinstance(plugin_dock.viewer, PublicOnlyProxy)
    assert isinstance(plugin_dock.backend, local_backend_cls)
    assert plugin_dock.model.value == "test-tiny"


def test_mouse_draws_a_rectangle_and_a_polygon_where_asked(plugin_viewer, qtbot, cmu_slide) -> None:
    slide = open_slide(plugin_viewer, cmu_slide)
    plugin_viewer.reset_view()
    shapes = plugin_viewer.add_shapes(name="drawn", scale=slide.scale, units=slide.units)
    tol = 2 * 2967 / min(plugin_viewer.window._qt_viewer.canvas.size)  # ~2 canvas px in data units

    i = draw_rectangle(qtbot, plugin_viewer, shapes, (400, 300), (1600, 1500))
    assert shapes.shape_type[i] == "rectangle"
    got = shapes.data[i]
    assert got.min(axis=0) == pytest.approx([400, 300], abs=tol)
    assert got.max(axis=0) == pytest.approx([1600, 1500], abs=tol)

    verts = [(1650, 550), (1750, 1300), (2300, 950), (2100, 450)]
    j = draw_polygon(qtbot, plugin_viewer, shapes, verts)
    assert shapes.shape_type[j] == "polygon"
    assert np.asarray(shapes.data[j]) == pytest.approx(np.asarray(verts, float), abs=tol)
    assert set(shapes.selected_data) == {j}  # what a user just drew is selected
