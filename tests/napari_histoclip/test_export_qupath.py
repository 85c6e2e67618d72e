"""The Export tab through the plugin path: files others can read, no folder made behind the
user's back, the user's layer left as it was, one colour per class, holes kept on import."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from backend.api import GridGeometry, ZeroShotResult
from napari_histoclip._shapes import CLASS
from napari_histoclip._slide import slide_of
from tests.support.dock_helpers import open_slide

pytestmark = [pytest.mark.gui, pytest.mark.slow]  # ~15 s each: a shown viewer per test
TILE = 448.0


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def scene(plugin_dock, plugin_viewer, cmu_slide):
    """The dock on CMU-1-Small-Region with a class map (top: tumor, bottom: stroma) and a
    regions layer of two unclassified rectangles, one in each half."""
    from napari.layers import Layer

    from napari_histoclip._layers import class_map_layers

    slide = open_slide(plugin_viewer, cmu_slide)
    info = slide_of(slide)
    rows, cols = -(-info.height // int(TILE)), -(-info.width // int(TILE))
    cm = np.ones((rows, cols), np.int32)
    cm[rows // 2 :] = 2
    result = ZeroShotResult(("tumor", "stroma"), cm, np.full((2, rows, cols), 0.5, np.float32),
                            GridGeometry((rows, cols), (TILE, TILE), ((TILE - 1) / 2, (TILE - 1) / 2)), False)
    class_map = plugin_viewer.add_layer(Layer.create(*class_map_layers(result, info, ["#ff0000", "#0000ff"])[0]))
    plugin_dock.captions.new_layer_button.native.click()
    shapes = plugin_viewer.layers[-1]
    shapes.add_rectangles(np.array([[200, 200], [600, 600]]))
    shapes.add_rectangles(np.array([[2400, 200], [2800, 600]]))
    panel = plugin_dock.export
    panel.reset_choices()
    panel.shapes.value = next(v for _, v in panel._shapes_choices() if v.name == shapes.name)
    panel.class_map.value = next(v for _, v in panel._class_map_choices() if v.name == class_map.name)
    return plugin_dock, shapes, class_map


def export(qtbot, dock, path: Path) -> None:
    dock.export.path.value = path
    dock.export.export_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)


def classes(path: Path) -> list[tuple[str, list[int]]]:
    feats = json.loads(path.read_text())["features"]
    return [(f["properties"]["classification"]["name"], f["properties"]["classification"]["color"])
            for f in feats if "classification" in f["properties"]]


def test_export_classifies_the_file_not_the_layer(scene, qtbot, tmp_path, notes) -> None:
    dock, shapes, _ = scene
    before = shapes.features.copy()
    export(qtbot, dock, tmp_path / "out.geojson")
    got = classes(tmp_path / "out.geojson")
    assert [name for name, _ in got[:2]] == ["tumor", "stroma"]  # the two shapes, from the class map
    assert list(shapes.features[CLASS]) == list(before[CLASS]) == ["", ""]  # the layer is untouched
    assert not notes.errors


def test_exported_files_follow_the_umask(scene, qtbot, tmp_path, umask_022) -> None:
    dock, _, _ = scene
    export(qtbot, dock, tmp_path / "shared.geojson")
    assert stat.S_IMODE((tmp_path / "shared.geojson").stat().st_mode) == 0o644  # a colleague can read it


def test_export_to_a_missing_folder_is_an_error(scene, qtbot, tmp_path, notes) -> None:
    dock, _, _ = scene
    export(qtbot, dock, tmp_path / "typo" / "out.geojson")
    assert "does not exist" in notes.errors[-1] and str(tmp_path / "typo") in notes.errors[-1]
    assert not (tmp_path / "typo").exists()


def test_a_class_has_one_colour_in_the_docks_export_and_in_file_save(scene, plugin_viewer, qtbot, tmp_path) -> None:
    dock, shapes, _ = scene
    shapes.selected_data = {0, 1}
    dock.captions.shapes.value = next(v for _, v in dock.captions._shapes_choices() if v.name == shapes.name)
    dock.captions.cls.value = "tumor"
    dock.captions.cls_button.native.click()
    export(qtbot, dock, tmp_path / "dock.geojson")
    plugin_viewer.layers.selection = {shapes}
    plugin_viewer.layers.save(str(tmp_path / "saved.geojson"), selected=True, plugin="napari-histoclip")
    from_dock, from_save = dict(classes(tmp_path / "dock.geojson")), dict(classes(tmp_path / "saved.geojson"))
    assert from_dock["tumor"] == from_save["tumor"] == [255, 0, 0]  # the class map's tumour red


def test_import_keeps_the_holes_of_a_polygon(scene, tmp_path, notes) -> None:
    dock, _, _ = scene
    outer = [[100, 100], [1100, 100], [1100, 1100], [100, 1100], [100, 100]]
    hole = [[400, 400], [700, 400], [700, 700], [400, 700], [400, 400]]
    doc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]},
        "properties": {"objectType": "annotation", "name": "tumour ring",
                       "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]}
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    dock.export.import_path.value = path
    layer = dock.export.import_geojson()
    assert len(layer.data) == 2
    assert list(layer.features["caption"]) == ["tumour ring", "hole in tumour ring"]
    assert list(layer.features[CLASS]) == ["Tumor", ""]
    assert "1 hole(s) imported as shapes of their own" in notes.warnings[-1]
