"""Several slides, shapes, imports and the server picker in the dock as a pathologist uses it
(issue 21, napari items 2-6 and 8, the Refine legend): the dock from Plugins > HistoCLIP (a
``PublicOnlyProxy`` viewer), slides opened with the plugin's reader, shapes drawn with the mouse,
the dock closed and reopened. The fake backend: no model, so these run in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import mouse
from tests.support.dock_helpers import open_slide, with_backend

pytestmark = pytest.mark.gui
MAP = "CMU-1-Small-Region: class map"


@pytest.fixture
def shot_dir(tmp_path: Path) -> Path:
    """Where the screenshots to look at go: ``$HISTOCLIP_SCREENSHOT_DIR`` or a temp dir."""
    import os

    out = Path(os.environ.get("HISTOCLIP_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def second_slide(slides_dir: Path) -> Path:
    return slides_dir / "tcga-cr-7395-01a-01-ts1.svs"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)


def label_cmu(qtbot, viewer, dock, cmu_slide: Path):
    open_slide(viewer, cmu_slide)
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    return viewer.layers[MAP]


def cmu_rectangle(qtbot, viewer, dock) -> object:
    """A regions layer on CMU (Caption tab's button) with a rectangle drawn by mouse, selected."""
    shapes = dock.captions.new_layer()
    viewer.reset_view()
    index = mouse.draw_rectangle(qtbot, viewer, shapes, (500, 400), (1500, 1400))
    shapes.mode = "select"
    shapes.selected_data = {index}
    return shapes


def test_opening_a_second_slide_hides_the_first_and_frames_the_new_one(plugin_viewer, plugin_dock, fake_backend,
                                                                       cmu_slide, second_slide, qtbot, notes,
                                                                       shot_dir) -> None:
    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    label_cmu(qtbot, viewer, dock, cmu_slide)
    shapes = cmu_rectangle(qtbot, viewer, dock)
    cmu_layers = list(viewer.layers)
    second = open_slide(viewer, second_slide)
    assert dock.slide.value is second or dock.slide.value == second
    shown = [lyr.name for lyr in cmu_layers if lyr.visible]
    assert shown == [], f"the first slide's layers are drawn over the second: {shown}"
    assert second.visible and shapes.visible is False
    from napari_histoclip._slide import slide_of
    from napari_histoclip._viewer import camera_of

    info = slide_of(second)
    centre = np.asarray(second.data_to_world(((info.height - 1) / 2, (info.width - 1) / 2)))
    assert np.allclose(np.asarray(camera_of(viewer).center)[-2:], centre, rtol=0.02)
    from test_screenshots import save_png

    save_png(viewer, shot_dir / "second-slide.png")
    assert not notes.errors, notes.errors


def test_a_shape_of_another_slide_is_refused(plugin_viewer, plugin_dock, fake_backend, cmu_slide, second_slide,
                                             qtbot, notes, tmp_path) -> None:
    from napari_histoclip._widgets._zeroshot import SELECTED_SHAPE

    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    open_slide(viewer, cmu_slide)
    shapes = cmu_rectangle(qtbot, viewer, dock)
    open_slide(viewer, second_slide)
    dock.set_mpp("0.5")  # the second slide has none in its metadata: the run would go ahead
    viewer.layers.selection.active = shapes  # the CMU shape, still selected, made active again
    dock.zero_shot.scope.value = SELECTED_SHAPE
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    assert notes.errors and "the selected shape is on CMU-1-Small-Region" in notes.errors[-1]
    assert not [lyr for lyr in viewer.layers if "tcga" in lyr.name and "class map" in lyr.name]
    index = tmp_path / "index"
    index.mkdir()
    dock.search.index_folder.value = str(index)
    dock.search.search_shape()
    assert len(notes.errors) == 2 and "the selected shape is on CMU-1-Small-Region" in notes.errors[-1]
    # Another layer active: the CMU shape is not taken either.
    viewer.layers.selection.active = viewer.layers[-1]
    dock.search.search_shape()
    assert len(notes.errors) == 3 and "select a shape" in notes.errors[-1]


def test_a_shape_on_naparis_own_shapes_layer_belongs_to_the_slide_it_was_drawn_on(
        plugin_viewer, plugin_dock, fake_backend, cmu_slide, second_slide, qtbot, notes) -> None:
    """A Shapes layer made with napari's own "new shapes layer" button (no slide of ours) belongs
    to the slide chosen when it was made: another slide's run refuses its shapes."""
    from napari_histoclip._slide import slide_of
    from napari_histoclip._widgets._zeroshot import SELECTED_SHAPE

    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    open_slide(viewer, cmu_slide)
    mine = viewer.add_shapes(name="my shapes")  # what napari's button makes
    assert slide_of(mine) is not None and slide_of(mine).path == str(cmu_slide)
    viewer.reset_view()
    index = mouse.draw_rectangle(qtbot, viewer, mine, (250, 200), (700, 650))  # µm: the layer has scale 1
    mine.mode = "select"
    mine.selected_data = {index}
    open_slide(viewer, second_slide)
    assert not mine.visible  # the first slide's, hidden with it
    dock.set_mpp("0.5")
    viewer.layers.selection.active = mine
    dock.zero_shot.scope.value = SELECTED_SHAPE
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    assert notes.errors and "the selected shape is on CMU-1-Small-Region" in notes.errors[-1]


def test_a_reopened_dock_works_on_the_visible_slide(plugin_viewer, plugin_dock, fake_backend, cmu_slide,
                                                    second_slide, qtbot, notes) -> None:
    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    label_cmu(qtbot, viewer, dock, cmu_slide)
    second = open_slide(viewer, second_slide)
    from napari_histoclip._slide import find_slide_layer

    cmu = find_slide_layer(viewer.layers, str(cmu_slide))
    cmu.visible, second.visible = False, True
    viewer.window.remove_dock_widget(dock.parent())
    qtbot.wait(50)
    _, again = viewer.window.add_plugin_dock_widget("napari-histoclip", "HistoCLIP")
    again = with_backend(again, fake_backend)
    assert again.slide.value.name == second.name
    # The reopened dock follows the paint strokes on the map that was already there.
    again.slide.value = cmu
    layer = viewer.layers[MAP]
    cell = tuple(int(v) for v in np.argwhere(np.asarray(layer.data) > 0)[0])
    value = 1 if layer.data[cell] != 1 else 2
    layer.brush_size = 1
    layer.paint(cell, value)
    assert again.refine.marks_of(str(cmu_slide)) == {cell: layer.metadata["labels"][value - 1]}


def test_a_failed_connect_keeps_the_docks_width(plugin_viewer, plugin_dock, qtbot, notes, shot_dir) -> None:
    from qtpy.QtWidgets import QApplication

    viewer, dock = plugin_viewer, plugin_dock
    picker = dock.backend_picker
    picker.where.value = "a server"
    for _ in range(10):  # the server fields shown, laid out
        QApplication.processEvents()
        qtbot.wait(20)
    width = dock.parent().width() if dock.parent() is not None else dock.width()
    canvas = mouse.canvas_of(viewer).native
    picker.url.value = "http://127.0.0.1:9/" + "a-very-long-server-path/" * 20
    picker.connect()
    wait(qtbot, dock)
    for _ in range(10):
        QApplication.processEvents()
        qtbot.wait(20)
    assert picker.state.value.startswith("not connected") and len(picker.state.value) <= 90
    assert "Connection refused" in picker.state.native.toolTip()  # the whole message, on hover
    after = dock.parent().width() if dock.parent() is not None else dock.width()
    assert after <= width + 2, (width, after)
    assert canvas.width() > 400, canvas.width()
    from test_screenshots import save_png

    save_png(viewer, shot_dir / "failed-connect.png")
    picker.where.value = "this computer"
    qtbot.wait(50)
    assert canvas.width() > 400 and picker.state.value == "working on this computer"


def test_our_own_export_reimports_without_turning_the_map_into_marks(plugin_viewer, plugin_dock, fake_backend,
                                                                      cmu_slide, qtbot, notes, tmp_path) -> None:
    from napari.layers import Shapes

    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    layer = label_cmu(qtbot, viewer, dock, cmu_slide)
    shapes = cmu_rectangle(qtbot, viewer, dock)
    dock.captions.cls.value = "tumor epithelium"
    dock.captions.set_class()
    before = dict(dock.refine.marks_of(str(cmu_slide)))
    out = tmp_path / "cmu.geojson"
    dock.export.reset_choices()
    dock.export.shapes.value, dock.export.class_map.value = shapes, layer
    dock.export.path.value = str(out)
    dock.export.export_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    n_shapes = len([lyr for lyr in viewer.layers if isinstance(lyr, Shapes)])
    dock.export.import_path.value = str(out)
    imported = dock.export.import_geojson()
    assert not notes.errors, notes.errors
    assert imported is not None and len(imported.data) == 1  # the rectangle, not the map's polygons
    assert len([lyr for lyr in viewer.layers if isinstance(lyr, Shapes)]) == n_shapes + 1
    assert dock.refine.marks_of(str(cmu_slide)) == before
    assert any("class-map polygons" in w and "left out" in w for w in notes.warnings), notes.warnings


def test_one_colour_per_class_and_no_silent_new_class(plugin_viewer, plugin_dock, fake_backend, cmu_slide, qtbot,
                                                      notes, tmp_path) -> None:
    from napari_histoclip._geojson import class_map_legend, recorded_colors

    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    open_slide(viewer, cmu_slide)
    shapes = cmu_rectangle(qtbot, viewer, dock)
    dock.captions.cls.value = "stroma"  # the shape gets its class before any map has it
    dock.captions.set_class()
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    layer = viewer.layers[MAP]
    stroma = class_map_legend(layer)["stroma"]
    assert recorded_colors(shapes)["stroma"] == stroma  # what File > Save writes too
    out = tmp_path / "shapes.geojson"
    dock.export.reset_choices()
    dock.export.shapes.value, dock.export.class_map.value = shapes, None
    dock.export.path.value = str(out)
    dock.export.export_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    (feature,) = json.loads(out.read_text())["features"]
    assert "#{:02x}{:02x}{:02x}".format(*feature["properties"]["classification"]["color"]) == stroma

    # A QuPath class typed on a shape is not a new Refine class: no marks, and the tab says why.
    assert dock.refine.marks_of(str(cmu_slide))  # "stroma" is a class of the map: its tiles are marks
    dock.captions.cls.value = "Tumor (QuPath)"
    dock.captions.set_class()
    assert dock.refine.marks_of(str(cmu_slide)) == {}
    dock.tabs.setCurrentWidget(dock.refine.native)
    assert "Tumor (QuPath)" in dock.refine.marks_label.value and "Add class" in dock.refine.marks_label.value


def test_the_refine_tab_has_a_legend(plugin_viewer, plugin_dock, fake_backend, cmu_slide, qtbot, notes) -> None:
    viewer, dock = plugin_viewer, with_backend(plugin_dock, fake_backend)
    assert dock.refine.legend.value == ""
    layer = label_cmu(qtbot, viewer, dock, cmu_slide)
    dock.tabs.setCurrentWidget(dock.refine.native)
    text = dock.refine.legend.value
    for name, color in zip(layer.metadata["labels"], layer.metadata["colors"], strict=True):
        assert name in text and color in text
    assert dock.refine.legend.native.isVisible()
