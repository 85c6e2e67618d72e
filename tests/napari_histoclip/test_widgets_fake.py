"""The dock driven as a user would, against the numpy test double (fast, deterministic)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_histoclip._shapes import CAPTION, nbest
from napari_histoclip._slide import slide_of
from napari_histoclip._widgets._main import HistoclipWidget

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


@pytest.fixture
def dock(make_napari_viewer, fake_backend, cmu_layer_data, qtbot):
    from napari.layers import Layer

    viewer = make_napari_viewer()
    widget = HistoclipWidget(viewer, backend=fake_backend)
    viewer.window.add_dock_widget(widget, name="HistoCLIP")
    viewer.add_layer(Layer.create(*cmu_layer_data))
    return widget


def wait(qtbot, widget: HistoclipWidget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


def test_header_lists_models_and_follows_the_open_slide(dock) -> None:
    assert dock.model.value == "fake-clip"
    assert dock.slide.value is not None and slide_of(dock.slide.value).name == "CMU-1-Small-Region.svs"
    dock.device.value = "cpu"
    assert dock._backend is None  # remade for the new device on next use


def test_zero_shot_class_map_aligned_and_relabelled(dock, qtbot, fake_backend, notes) -> None:
    panel = dock.zero_shot
    panel.threshold.value = 0.3
    panel.run_button.native.click()
    assert dock.runner.busy or fake_backend.calls  # started in a worker
    wait(qtbot, dock)
    viewer = dock.viewer
    labels = viewer.layers["CMU-1-Small-Region: class map"]
    mpp = 0.499
    assert labels.scale.tolist() == pytest.approx([448 * mpp] * 2)
    assert labels.translate.tolist() == pytest.approx([(447 / 2) * mpp] * 2)
    assert set(np.unique(labels.data)) <= {0, 1, 2, 3, 4, 5}
    assert [lyr.name for lyr in viewer.layers][2:] == [
        "CMU-1-Small-Region: p(tumor epithelium)", "CMU-1-Small-Region: p(stroma)",
        "CMU-1-Small-Region: p(lymphocytes)", "CMU-1-Small-Region: p(adipose tissue)",
    ]
    assert "tumor epithelium" in panel.legend.value and "%" in panel.legend.value
    assert any("random weights" in w for w in notes.warnings)

    from napari_histoclip._widgets._prompts import PromptRow

    panel.prompts.set_rows([PromptRow("necrosis", "#000000"), PromptRow("tumor", "#ff0000")])
    labels.opacity = 0.9  # a user's tweak survives relabelling
    embeds = fake_backend.calls.count("embed_slide")
    panel.run_button.native.click()
    wait(qtbot, dock)
    names = [lyr.name for lyr in viewer.layers]
    assert names.count("CMU-1-Small-Region: class map") == 1 and "CMU-1-Small-Region: p(stroma)" not in names
    assert "CMU-1-Small-Region: p(necrosis)" in names
    assert viewer.layers["CMU-1-Small-Region: class map"].opacity == pytest.approx(0.9)
    assert fake_backend.calls.count("embed_slide") == embeds + 1  # called, but served from its cache
    assert not notes.errors


def test_text_heatmap(dock, qtbot) -> None:
    dock.zero_shot.query.value = "necrosis"
    dock.zero_shot.heatmap_button.native.click()
    wait(qtbot, dock)
    heat = dock.viewer.layers["CMU-1-Small-Region: 'necrosis'"]
    assert heat.scale.tolist() == pytest.approx([448 * 0.499] * 2)


def test_zero_shot_on_a_drawn_region(dock, qtbot) -> None:
    shapes = dock.captions.new_layer()
    shapes.add_rectangles(np.array([[100, 100], [900, 1200]]))
    shapes.selected_data = {0}
    dock.viewer.layers.selection.active = shapes
    dock.zero_shot.scope.value = "selected shape"
    dock.zero_shot.run()
    wait(qtbot, dock)
    assert "CMU-1-Small-Region: class map (region)" in dock.viewer.layers


def test_captions_land_on_shapes_and_can_be_chosen_and_edited(dock, qtbot, tmp_path) -> None:
    panel = dock.captions
    panel.new_layer_button.native.click()
    shapes = panel.shapes.value
    assert shapes is not None and shapes.scale.tolist() == pytest.approx([0.499, 0.499])
    shapes.add_rectangles(np.array([[200, 300], [700, 900]]))
    shapes.add_polygons([np.array([[1500, 400], [1500, 1200], [2200, 800]])])
    panel.captioner.value = tmp_path
    panel.n_best.value = 3
    panel.caption_button.native.click()
    wait(qtbot, dock)
    captions = list(shapes.features[CAPTION])
    assert captions[0].startswith("tumour region 0 at 300,200") and captions[1].startswith("stroma region 1")
    assert shapes.text.values[0].startswith("tumour region 0")
    assert panel.nbest_list.count() == 3 and len(nbest(shapes, 0)) == 3

    shapes.selected_data = {1}  # selecting a shape shows its n-best list
    assert panel.which.value.startswith("shape 1")
    panel.nbest_list.itemClicked.emit(panel.nbest_list.item(2))
    assert shapes.features[CAPTION].iloc[1].endswith("option 2")
    panel.edit.value = "fibrous stroma, edited"
    panel.apply_button.native.click()
    assert shapes.features[CAPTION].iloc[1] == "fibrous stroma, edited"
    assert np.isnan(shapes.features["caption_score"].iloc[1])
    panel.cls.value = "Stroma"
    panel.cls_button.native.click()
    assert shapes.features["class"].iloc[1] == "Stroma"
    assert shapes.text.values[1].replace("\n", " ") == "[Stroma] fibrous stroma, edited"


def test_search_builds_an_index_and_a_click_frames_the_hit(dock, qtbot, tmp_path, slides_dir) -> None:
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("CMU-1-Small-Region.svs", "kidney-48-5.tif"):
        os.symlink(slides_dir / name, cohort / name)
    (cohort / "notes.txt").write_text("not a slide")
    panel = dock.search
    panel.folder.value = cohort
    panel.build_button.native.click()
    wait(qtbot, dock)
    assert Path(panel.index.value) == cohort / "histoclip-index"

    panel.k.value = 4
    panel.text.value = "tumor"
    panel.text_button.native.click()
    wait(qtbot, dock)
    assert panel.results.count() == 4
    assert not panel.results.item(0).icon().isNull()  # a thumbnail

    viewer = dock.viewer
    panel.results.itemClicked.emit(panel.results.item(1))  # a hit on the kidney slide: opened
    kidney = viewer.layers["kidney-48-5.tif"]
    assert kidney.visible and not viewer.layers["CMU-1-Small-Region.svs"].visible
    hit = panel.hits[1].hit
    x, y, w, h = hit.box
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((y + h / 2 - 0.5, x + w / 2 - 0.5))
    outline = viewer.layers["kidney-48-5: search hits"]
    assert len(outline.data) >= 1 and outline.selected_data == {0}

    panel.results.itemClicked.emit(panel.results.item(0))  # back on the CMU slide, in µm
    x, y, w, h = panel.hits[0].hit.box
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx(((y + h / 2 - 0.5) * 0.499, (x + w / 2 - 0.5) * 0.499))
    assert viewer.scene.camera.zoom > 0.5
    assert dock.slide.value is viewer.layers["CMU-1-Small-Region.svs"]


def test_export_and_import_qupath_geojson(dock, qtbot, tmp_path) -> None:
    import json

    dock.zero_shot.run()
    wait(qtbot, dock)
    shapes = dock.captions.new_layer()
    shapes.add_rectangles(np.array([[200, 300], [700, 900]]))
    dock.export.reset_choices()
    dock.export.shapes.value = shapes
    dock.export.class_map.value = dock.viewer.layers["CMU-1-Small-Region: class map"]
    dock.export.path.value = tmp_path / "out.geojson"
    dock.export.export_button.native.click()
    wait(qtbot, dock)
    doc = json.loads((tmp_path / "out.geojson").read_text())
    kinds = [f["geometry"]["type"] for f in doc["features"]]
    assert kinds[0] == "Polygon" and "MultiPolygon" in kinds
    # The unlabelled rectangle took the class map's majority class under it.
    assert doc["features"][0]["properties"]["classification"]["name"] == shapes.features["class"].iloc[0] != ""
    names = {f["properties"]["classification"]["name"] for f in doc["features"][1:]}
    assert names <= {"tumor epithelium", "stroma", "lymphocytes", "adipose tissue"}

    dock.export.import_path.value = tmp_path / "out.geojson"
    dock.export.import_button.native.click()
    imported = dock.viewer.layers["CMU-1-Small-Region: out"]
    assert len(imported.data) >= 2 and imported.shape_type[0] == "rectangle"
    assert np.allclose(sorted(map(tuple, imported.data[0])), sorted(map(tuple, shapes.data[0])))


def test_errors_become_notifications(make_napari_viewer, fake_backend, qtbot, notes) -> None:
    from backend.errors import SlideReadError

    viewer = make_napari_viewer()
    widget = HistoclipWidget(viewer, backend=fake_backend)
    widget.zero_shot.run_button.native.click()  # no slide open
    assert notes.errors[-1].startswith("Slide: open a whole-slide image first")
    widget.embed_button.native.click()
    assert len(notes.errors) == 2

    from napari.layers import Layer

    from napari_histoclip._reader import read_slide_layer

    viewer.add_layer(Layer.create(*read_slide_layer(Path(__file__).parents[2] / "../shared/testdata/slides/kidney-48-5.tif")))
    widget.zero_shot.prompts.set_rows([])
    widget.zero_shot.run()
    assert "at least two class prompts" in notes.errors[-1]
    fake_backend.fail_with = SlideReadError("kidney-48-5.tif", "reading tile 3 failed: Bogus marker length")
    widget.embed()
    wait(qtbot, widget)
    assert notes.errors[-1] == "Embedding kidney-48-5.tif: kidney-48-5.tif: reading tile 3 failed: Bogus marker length"
    fake_backend.fail_with = None
    widget.search.text.value = "tumor"
    widget.search.search_text()
    assert notes.errors[-1].startswith("Index: choose a cohort index folder")


def test_cancel_stops_an_embedding(dock, qtbot, fake_backend, notes) -> None:
    fake_backend.tile_delay = 0.05
    dock.embed_button.native.click()
    qtbot.waitUntil(lambda: "embedding" in dock.status.value, timeout=WAIT_MS)
    assert dock.cancel_button.enabled
    dock.cancel_button.native.click()
    wait(qtbot, dock)
    assert any(m.endswith("cancelled") for m in notes.infos)
    assert not dock.cancel_button.enabled and dock.status.value == "ready"


def test_sync_mode_runs_on_the_calling_thread(dock, monkeypatch) -> None:
    monkeypatch.setenv("HISTOCLIP_SYNC", "1")
    dock.zero_shot.run()
    assert not dock.runner.busy and "CMU-1-Small-Region: class map" in dock.viewer.layers
