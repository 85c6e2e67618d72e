"""The dock's height (issue 21, napari item 4): its tabs scroll, so the dock asks for little
height of its own and a failed server Connect never makes the window taller."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui
MAX_MIN_HEIGHT = 600  # px: the dock asked for ~1009 before its tabs scrolled


def settle(qtbot) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()
        qtbot.wait(20)


def test_the_dock_asks_for_little_height(plugin_viewer, plugin_dock, qtbot) -> None:
    settle(qtbot)
    dock_widget = plugin_dock.parent()  # napari's QDockWidget around ours
    assert plugin_dock.minimumSizeHint().height() < MAX_MIN_HEIGHT, plugin_dock.minimumSizeHint()
    assert dock_widget.minimumSizeHint().height() < MAX_MIN_HEIGHT + 60, dock_widget.minimumSizeHint()
    # Every tab is still reachable: the tab's page is inside a scroll area that grows with it.
    from qtpy.QtWidgets import QScrollArea

    for i in range(plugin_dock.tabs.count()):
        page = plugin_dock.tabs.widget(i)
        area = plugin_dock.tabs.scroll_area(i)
        assert isinstance(area, QScrollArea) and area.widgetResizable() and area.widget() is page


def test_a_failed_connect_keeps_the_window_height(plugin_viewer, plugin_dock, qtbot, notes) -> None:
    window = plugin_viewer.window._qt_window
    window.resize(1400, 800)
    settle(qtbot)
    height = window.height()
    picker = plugin_dock.backend_picker
    picker.where.value = "a server"
    settle(qtbot)
    picker.url.value = "http://127.0.0.1:9/" + "a-very-long-server-path/" * 20
    picker.connect()
    qtbot.waitUntil(lambda: not plugin_dock.runner.busy, timeout=60_000)
    settle(qtbot)
    assert picker.state.value.startswith("not connected")
    assert window.height() == height, (height, window.height())
    picker.where.value = "this computer"
    settle(qtbot)
    assert window.height() == height, (height, window.height())
