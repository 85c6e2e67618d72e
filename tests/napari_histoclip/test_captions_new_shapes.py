"""Captions and new shapes through the plugin path (Plugins > HistoCLIP, shapes drawn with the
mouse): a new shape starts blank, and "Caption shapes" captions what the user chose."""

from __future__ import annotations

import json
import math

import pytest

from napari_histoclip._shapes import CAPTION, CAPTION_SCORE, CAPTION_TEXT, CLASS, NBEST
from tests.support.dock_helpers import open_slide
from tests.support.mouse import draw_polygon, draw_rectangle

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT_MS = 120_000


@pytest.fixture
def drawn(plugin_dock, plugin_viewer, qtbot, cmu_slide, tiny_captioner):
    """The dock on CMU-1-Small-Region, a regions layer from the Caption tab, one rectangle drawn
    with the mouse and captioned through the dock."""
    open_slide(plugin_viewer, cmu_slide)
    plugin_viewer.reset_view()
    panel = plugin_dock.captions
    panel.new_layer_button.native.click()
    layer = plugin_viewer.layers[-1]  # the real layer (the dock holds napari's proxy of it)
    assert panel.shapes.value is not None and panel.shapes.value.name == layer.name
    draw_rectangle(qtbot, plugin_viewer, layer, (400, 300), (1100, 1000))
    panel.captioner.value = tiny_captioner
    panel.caption_button.native.click()
    qtbot.waitUntil(lambda: not plugin_dock.runner.busy, timeout=WAIT_MS)
    assert layer.features[CAPTION].iloc[0]
    return plugin_dock, layer


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=WAIT_MS)


def test_a_new_shape_starts_blank_on_canvas_and_in_export(drawn, plugin_viewer, qtbot, tmp_path, notes) -> None:
    dock, layer = drawn
    dock.captions.cls.value = "tumor"
    layer.selected_data = {0}
    dock.captions.cls_button.native.click()
    layer.selected_data = {0}  # the captioned, classified shape is selected while drawing
    j = draw_polygon(qtbot, plugin_viewer, layer, [(1650, 550), (1750, 1300), (2300, 950)])
    row = layer.features.iloc[j]
    assert (row[CAPTION], row[CAPTION_TEXT], row[CLASS], row[NBEST]) == ("", "", "", "")
    assert math.isnan(row[CAPTION_SCORE])
    assert str(layer.text.values[j]) == ""  # nothing drawn beside it on the canvas
    assert str(layer.text.values[0]).startswith("[tumor]")

    export = dock.export
    export.shapes.reset_choices()
    export.shapes.value = next(v for _, v in export._shapes_choices() if v.name == layer.name)
    export.path.value = tmp_path / "out.geojson"
    export.export_button.native.click()
    wait(qtbot, dock)
    feats = json.loads((tmp_path / "out.geojson").read_text())["features"]
    assert [f["properties"].get("classification", {}).get("name") for f in feats] == ["tumor", None]
    assert "name" not in feats[1]["properties"]
    assert not notes.errors


def test_caption_shapes_captions_the_uncaptioned_by_default(drawn, plugin_viewer, qtbot, notes) -> None:
    dock, layer = drawn
    panel = dock.captions
    layer.selected_data = {0}
    panel.choose(1)  # the user picked the second caption of shape 0: it must survive
    chosen = layer.features[CAPTION].iloc[0]
    draw_rectangle(qtbot, plugin_viewer, layer, (1300, 300), (1900, 900))
    draw_polygon(qtbot, plugin_viewer, layer, [(1650, 1100), (1750, 1800), (2300, 1450)])
    assert set(layer.selected_data) == {2}  # napari selects what was just drawn
    panel.caption_button.native.click()
    wait(qtbot, dock)
    assert layer.features[CAPTION].iloc[0] == chosen
    assert all(layer.features[CAPTION].iloc[1:])  # both new shapes, not only the selected one
    assert panel.which.value.startswith("shape 2")  # the dock shows the shape selected on the canvas

    panel.scope.value = "selected shapes"
    layer.selected_data = {0}
    panel.caption_button.native.click()
    wait(qtbot, dock)
    assert layer.features[CAPTION].iloc[0] != chosen  # re-captioned: the best caption again
    assert not notes.errors

    panel.scope.value = "uncaptioned shapes"
    panel.caption_button.native.click()
    assert "every shape has a caption" in notes.errors[-1] and "all shapes" in notes.errors[-1]
