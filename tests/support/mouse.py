"""Drawing shapes as a user does: real Qt mouse events sent to napari's canvas widget.

The events go through the whole chain a hand on a mouse goes through: Qt -> vispy's Qt
backend -> napari's canvas (canvas pixels to world) -> the Shapes layer's mouse bindings of
its drawing mode. Points are given in the Shapes layer's data coordinates (row, col) and
turned into canvas pixels with the same vispy transform napari inverts for a click, so a test
can say where a shape goes and check where it landed.

Usage::

    from tests.support.mouse import draw_polygon, draw_rectangle

    draw_rectangle(qtbot, viewer, shapes, (400, 300), (1600, 1500))
    draw_polygon(qtbot, viewer, shapes, [(1650, 550), (1750, 1300), (2300, 950)])

``viewer`` is the real ``napari.Viewer`` (not a plugin's proxy); the canvas must show the
points (e.g. after ``viewer.reset_view()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Pause between events, ms: vispy drops mouse moves that come within 10 ms of the last one.
STEP_MS = 25
#: Mouse moves per drag (a drag is never one jump in real use).
DRAG_STEPS = 6


def canvas_of(viewer: Any) -> Any:
    """napari's vispy canvas of a viewer (a ``VispyCanvas``)."""
    return viewer.window._qt_viewer.canvas


def world_to_canvas(viewer: Any, world_rc: Sequence[float]) -> tuple[float, float]:
    """World (row, col) of the displayed dims to canvas pixel (x, y)."""
    canvas = canvas_of(viewer)
    view = canvas.view
    transform = view.transform * view.scene.transform
    displayed = list(viewer.dims.displayed)
    world = np.asarray(world_rc, dtype=float)[-len(displayed):]
    x, y = transform.map(list(world[::-1]))[:2]  # vispy speaks (x, y) = (col, row)
    return float(x), float(y)


def data_to_canvas(viewer: Any, layer: Any, data_rc: Sequence[float]) -> tuple[float, float]:
    """Data (row, col) of ``layer`` to canvas pixel (x, y), checked to lie on the canvas."""
    world = layer.data_to_world(np.asarray(data_rc, dtype=float))
    x, y = world_to_canvas(viewer, world)
    w, h = canvas_of(viewer).size[1], canvas_of(viewer).size[0]
    if not (0 <= x < w and 0 <= y < h):
        raise AssertionError(
            f"data point {tuple(data_rc)} of {layer.name!r} is at canvas pixel ({x:.0f}, {y:.0f}), "
            f"off the {w}x{h} canvas: frame the view first (viewer.reset_view())"
        )
    return x, y


def _send(widget: Any, kind: str, pos: tuple[float, float], *, held: bool) -> None:
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    types = {
        "press": QEvent.Type.MouseButtonPress,
        "release": QEvent.Type.MouseButtonRelease,
        "move": QEvent.Type.MouseMove,
        "double": QEvent.Type.MouseButtonDblClick,
    }
    left = Qt.MouseButton.LeftButton
    button = Qt.MouseButton.NoButton if kind == "move" else left
    buttons = left if held else Qt.MouseButton.NoButton
    local = QPointF(*pos)
    event = QMouseEvent(
        types[kind], local, QPointF(widget.mapToGlobal(local)), button, buttons,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(widget, event)


def _prepare(qtbot: Any, viewer: Any, layer: Any, mode: str) -> Any:
    viewer.layers.selection.active = layer  # the canvas sends mouse events to the active layer
    layer.mode = mode
    qtbot.wait(STEP_MS)
    return canvas_of(viewer).native


def _glide(qtbot: Any, widget: Any, start: tuple[float, float], end: tuple[float, float], *, held: bool) -> None:
    for t in np.linspace(0, 1, DRAG_STEPS + 1)[1:]:
        pos = (start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))
        _send(widget, "move", pos, held=held)
        qtbot.wait(STEP_MS)


def draw_rectangle(
    qtbot: Any,
    viewer: Any,
    layer: Any,
    corner: Sequence[float],
    opposite: Sequence[float],
) -> int:
    """Drag a rectangle from ``corner`` to ``opposite`` (data row, col of ``layer``) in
    ``add_rectangle`` mode; returns the new shape's index (the layer stays in that mode)."""
    before = len(layer.data)
    widget = _prepare(qtbot, viewer, layer, "add_rectangle")
    p0, p1 = data_to_canvas(viewer, layer, corner), data_to_canvas(viewer, layer, opposite)
    _send(widget, "move", p0, held=False)
    qtbot.wait(STEP_MS)
    _send(widget, "press", p0, held=True)
    qtbot.wait(STEP_MS)
    _glide(qtbot, widget, p0, p1, held=True)
    _send(widget, "release", p1, held=False)
    qtbot.wait(STEP_MS)
    if len(layer.data) != before + 1:
        raise AssertionError(f"{layer.name!r}: the drag drew {len(layer.data) - before} shapes, not 1")
    return len(layer.data) - 1


def draw_polygon(
    qtbot: Any,
    viewer: Any,
    layer: Any,
    vertices: Sequence[Sequence[float]],
) -> int:
    """Click each vertex (data row, col of ``layer``) in ``add_polygon`` mode and double-click
    the last one to close the polygon; returns the new shape's index."""
    if len(vertices) < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, got {len(vertices)}")
    before = len(layer.data)
    widget = _prepare(qtbot, viewer, layer, "add_polygon")
    points = [data_to_canvas(viewer, layer, v) for v in vertices]
    last = points[0]
    _send(widget, "move", last, held=False)
    qtbot.wait(STEP_MS)
    for i, p in enumerate(points):
        if i:
            _glide(qtbot, widget, last, p, held=False)
        _send(widget, "press", p, held=True)
        qtbot.wait(STEP_MS)
        _send(widget, "release", p, held=False)
        qtbot.wait(STEP_MS)
        last = p
    # Qt's double click: press, release, double-click, release at the same place.
    _send(widget, "double", last, held=True)
    qtbot.wait(STEP_MS)
    _send(widget, "release", last, held=False)
    qtbot.wait(STEP_MS)
    if len(layer.data) != before + 1:
        raise AssertionError(f"{layer.name!r}: the clicks drew {len(layer.data) - before} shapes, not 1")
    return len(layer.data) - 1


def click(qtbot: Any, viewer: Any, layer: Any, point: Sequence[float]) -> None:
    """Click once at ``point`` (data row, col of ``layer``) in ``select`` mode: picks the shape
    under the pointer, as a user's click on an outlined tile does."""
    widget = _prepare(qtbot, viewer, layer, "select")
    p = data_to_canvas(viewer, layer, point)
    _send(widget, "move", p, held=False)
    qtbot.wait(STEP_MS)
    _send(widget, "press", p, held=True)
    qtbot.wait(STEP_MS)
    _send(widget, "release", p, held=False)
    qtbot.wait(STEP_MS)


def paint_cell(qtbot: Any, viewer: Any, layer: Any, cell: tuple[int, int], value: int) -> None:
    """One brush stroke of ``value`` on the class-map pixel ``cell`` (one tile), by mouse."""
    layer.selected_label = value
    layer.brush_size = 1
    widget = _prepare(qtbot, viewer, layer, "paint")
    viewer.reset_view()  # paint mode's controls may have narrowed the canvas
    qtbot.wait(STEP_MS)
    pos = data_to_canvas(viewer, layer, cell)
    _send(widget, "move", pos, held=False)
    qtbot.wait(STEP_MS)
    _send(widget, "press", pos, held=True)
    qtbot.wait(STEP_MS)
    _send(widget, "release", pos, held=False)
    qtbot.wait(STEP_MS)
