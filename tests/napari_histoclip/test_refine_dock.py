"""The Refine tab in a real viewer: paint tiles with napari's brush (real mouse events), Refine,
the unsure list, undo, and save as classifier; ``test-tiny`` on CMU-1-Small-Region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.dock_helpers import open_slide
from tests.support.mouse import paint_cell as paint

pytestmark = pytest.mark.gui
MAP = "CMU-1-Small-Region: class map"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


def test_paint_refine_unsure_undo_and_save(plugin_viewer, plugin_dock, cmu_slide: Path, qtbot, notes,
                                           tmp_path: Path) -> None:
    from backend.models.classifier import load_classifier

    viewer, dock = plugin_viewer, plugin_dock
    open_slide(viewer, cmu_slide)
    dock.zero_shot.prompts.set_color(0, "#123456")  # a colour of the user's: the saved classifier keeps it
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    zs_layer = viewer.layers[MAP]
    zero_shot = np.array(zs_layer.data)
    labels = list(zs_layer.metadata["labels"])
    colors = list(zs_layer.metadata["colors"])
    assert colors[0] == "#123456"
    viewer.reset_view()

    tissue = [tuple(int(v) for v in rc) for rc in np.argwhere(zero_shot > 0)]
    # Two tiles per class, each painted with a class the zero-shot map did not give it.
    wanted: dict[tuple[int, int], int] = {}
    for k in range(len(labels)):
        for cell in [c for c in tissue if zero_shot[c] != k + 1 and c not in wanted][:2]:
            wanted[cell] = k + 1
    for cell, value in wanted.items():
        paint(qtbot, viewer, zs_layer, cell, value)
    background = tuple(int(v) for v in np.argwhere(zero_shot == 0)[0])
    paint(qtbot, viewer, zs_layer, background, 1)  # no tissue there: not a mark, and undone
    marks = dock.refine.slides[str(cmu_slide)].marks
    assert marks == {cell: labels[v - 1] for cell, v in wanted.items()}
    assert zs_layer.data[background] == 0
    assert f"{len(wanted)} marked tiles" in dock.refine.marks_label.value

    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    refined = viewer.layers[MAP]
    assert refined is zs_layer  # the dock updates the map layer in place (no rebuild: no UI freeze)
    for cell, value in wanted.items():
        assert refined.data[cell] == value
        (prob,) = [lyr for lyr in viewer.layers if lyr.metadata.get("kind") == "probability"]
        assert prob.metadata["probabilities"][value - 1][cell] == pytest.approx(1.0)
    assert not np.array_equal(refined.data, zero_shot)

    # The unsure list: tiles not marked; a click centres the view on one.
    items = dock.refine.unsure
    assert items.count() == 10
    assert not set(dock.refine._unsure_cells) & set(wanted)
    from napari_histoclip._viewer import camera_of

    before = tuple(camera_of(viewer).center)
    items.itemClicked.emit(items.item(3))
    r, c = dock.refine._unsure_cells[3]
    centre = refined.data_to_world((r, c))
    assert tuple(camera_of(viewer).center)[-2:] == pytest.approx(tuple(centre), rel=1e-3)
    assert tuple(camera_of(viewer).center) != before

    # Undo the last stroke: its mark is gone, the map refined again without it.
    last = list(wanted)[-1]
    dock.refine.undo_button.native.click()
    wait(qtbot, dock)
    assert last not in dock.refine.slides[str(cmu_slide)].marks

    # Save as classifier: a bundle of the dock's classes, trained on the remaining marks.
    bundle = tmp_path / "dock-classifier"
    dock.refine.save_path.value = str(bundle)
    dock.refine.save_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    clf = load_classifier(bundle)
    assert clf.class_names == tuple(labels) and clf.card["slides"][0]["marks"] == len(wanted) - 1
    assert ["#{:02x}{:02x}{:02x}".format(*c) for c in clf.head.colors] == colors

    # Clear: back to the zero-shot map, exactly; painting the new map still makes marks.
    dock.refine.clear_button.native.click()
    wait(qtbot, dock)
    np.testing.assert_array_equal(viewer.layers[MAP].data, zero_shot)
    cell = next(c for c in tissue if zero_shot[c] != 2)
    paint(qtbot, viewer, viewer.layers[MAP], cell, 2)
    assert dock.refine.slides[str(cmu_slide)].marks == {cell: labels[1]}

    # Apply the saved classifier: its map replaces the class map; Refine then refines it.
    from backend.api import ClassifyRequest, SlideRef

    dock.refine.apply_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    applied = viewer.layers[MAP]
    assert applied.metadata["classifier"] == str(bundle) and applied.metadata["labels"] == labels
    assert applied.metadata["colors"] == colors  # each class in the colour it was saved with
    from napari_histoclip._slide import slide_of

    info = slide_of(applied)
    expected = dock.backend.classify(ClassifyRequest(SlideRef(info.path, info.mpp), str(bundle)))
    np.testing.assert_array_equal(applied.data, expected.class_map)
    assert not dock.refine.slides.get(str(cmu_slide)) or not dock.refine.slides[str(cmu_slide)].marks
    target = next(c for c in tissue if applied.data[c] != 3)
    paint(qtbot, viewer, applied, target, 3)
    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    again = viewer.layers[MAP]
    assert again.metadata["classifier"] == str(bundle) and again.data[target] == 3


def test_refine_without_a_class_map_says_what_to_do(plugin_viewer, plugin_dock, cmu_slide: Path, notes) -> None:
    open_slide(plugin_viewer, cmu_slide)
    plugin_dock.refine.refine_button.native.click()
    assert notes.errors and "label the slide in the Zero-shot tab first" in notes.errors[0]


def test_screenshots_before_and_after_refine(local_backend, plugin_viewer, plugin_dock, qtbot, cmu_slide, tmp_path,
                                             capsys, notes) -> None:
    """``refine-before.png`` (zero-shot map with painted marks) and ``refine-after.png`` (the
    refined map, legend and unsure list), to ``$HISTOCLIP_SCREENSHOT_DIR`` or a temp dir."""
    import os
    import sys

    from PIL import Image
    from test_screenshots import DOCK_WIDTH, MAX_BYTES, WINDOW, save_png

    from tests.support.dock_helpers import slide_dock

    out = Path(os.environ.get("HISTOCLIP_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    viewer = plugin_viewer
    viewer.window._qt_window.resize(*WINDOW)
    # The module's backend (first in the arguments: it imports torch before the canvas maps Mesa).
    dock = slide_dock(plugin_dock, viewer, local_backend, cmu_slide, "test-tiny")
    dock.setMaximumWidth(DOCK_WIDTH)
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    dock.tabs.setCurrentIndex(dock.tabs.count() - 1)
    layer = viewer.layers[MAP]
    zero_shot = np.array(layer.data)
    tissue = [tuple(int(v) for v in rc) for rc in np.argwhere(zero_shot > 0)]
    layer.brush_size = 1
    for i, cell in enumerate(tissue[::7][:8]):
        layer.paint(cell, 1 + i % len(layer.metadata["labels"]))  # what the brush calls
    viewer.reset_view()
    shots = [save_png(viewer, out / "refine-before.png", dock)]
    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    assert dock.refine.unsure.count() == 10
    shots.append(save_png(viewer, out / "refine-after.png", dock))
    for path in shots:
        assert 0 < path.stat().st_size < MAX_BYTES, path
        assert np.asarray(Image.open(path).convert("RGB")).std() > 20  # not blank
    with capsys.disabled():
        print(f"\n[screenshots] {', '.join(p.name for p in shots)} in {out}", file=sys.stderr)


def test_a_new_class_from_painted_examples(plugin_viewer, plugin_dock, cmu_slide: Path, qtbot, notes) -> None:
    viewer, dock = plugin_viewer, plugin_dock
    open_slide(viewer, cmu_slide)
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    layer = viewer.layers[MAP]
    labels = list(layer.metadata["labels"])
    n = len(labels)
    dock.refine.new_class.value = "folds"
    dock.refine.add_class_button.native.click()
    assert not notes.errors, notes.errors
    assert layer.metadata["labels"] == [*labels, "folds"] and layer.selected_label == n + 1
    tissue = [tuple(int(v) for v in rc) for rc in np.argwhere(np.asarray(layer.data) > 0)]
    for cell in tissue[:3]:
        paint(qtbot, viewer, layer, cell, n + 1)
    assert set(dock.refine.slides[str(cmu_slide)].marks.values()) == {"folds"}
    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    refined = viewer.layers[MAP]
    assert refined.metadata["labels"] == [*labels, "folds"]
    assert all(refined.data[c] == n + 1 for c in tissue[:3])
    assert "folds" in dock.zero_shot.legend.value
    assert "folds" in dock.zero_shot.probability.choices  # the probability layer has the new class
    dock.refine.new_class.value = "folds"
    dock.refine.add_class_button.native.click()
    assert notes.errors and "already a class" in notes.errors[-1]
