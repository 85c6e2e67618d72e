"""The Zero-shot tab's second label source, "a trained classifier", through the dock napari's
Plugins menu makes: a CLIP-IT-style bundle (its own image-only backbone) labels the whole slide
and a drawn rectangle; the legend shows the bundle's classes and colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.dock_helpers import open_slide
from tests.support.mouse import draw_rectangle

pytestmark = pytest.mark.gui
NAMES = ("tumor", "stroma", "fat")
COLORS = ((200, 10, 10), (10, 200, 10), (10, 10, 200))
MAP = "CMU-1-Small-Region: class map"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.support.dock_helpers import tiny_classifier

    return tiny_classifier(tmp_path_factory.mktemp("dock-classifier") / "student", NAMES, COLORS)


def test_zero_shot_tab_labels_with_a_trained_classifier(plugin_viewer, plugin_dock, cmu_slide: Path, qtbot, notes,
                                                        student: str) -> None:
    from backend.api import ClassifyRequest, SlideRef
    from napari_histoclip._widgets._zeroshot import CLASSIFIER, SELECTED_SHAPE, TEXT_PROMPTS

    viewer, dock = plugin_viewer, plugin_dock
    zs = dock.zero_shot
    open_slide(viewer, cmu_slide)
    zs.source.value = CLASSIFIER
    assert zs.prompts.isHidden() and not zs.templates.visible and zs.classifier.visible
    zs.run_button.native.click()  # no bundle chosen yet: said, nothing run
    assert any("choose the folder of a classifier bundle" in e for e in notes.errors), notes.errors
    notes.errors.clear()

    zs.classifier.value = student
    for name in NAMES:  # the bundle's classes as the legend before any run, in its colours
        assert name in zs.legend.value
    assert "#c80a0a" in zs.legend.value
    zs.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    layer = viewer.layers[MAP]
    assert tuple(layer.metadata["labels"]) == NAMES and layer.metadata["classifier"] == student
    expected = dock.backend.classify(ClassifyRequest(SlideRef(str(cmu_slide)), student))
    np.testing.assert_array_equal(np.asarray(layer.data), expected.class_map)
    assert "#c80a0a" in zs.legend.value and "%" in zs.legend.value  # after the run: shares of the tissue

    # A drawn rectangle: only the tiles under it, labelled as on the whole slide.
    viewer.reset_view()
    dock.captions.new_layer_button.native.click()
    shapes = viewer.layers[-1]
    draw_rectangle(qtbot, viewer, shapes, (400, 300), (1600, 1500))
    zs.scope.value = SELECTED_SHAPE
    zs.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    region = np.asarray(viewer.layers[MAP + " (region)"].data)
    inside = region > 0
    assert 0 < inside.sum() < (expected.class_map > 0).sum()
    np.testing.assert_array_equal(region[inside], expected.class_map[inside])
    assert viewer.layers[MAP + " (region)"].metadata["classifier"] == student

    zs.source.value = TEXT_PROMPTS  # back to prompts: the table again
    assert not zs.prompts.isHidden() and not zs.classifier.visible


def test_both_apply_classifier_entry_points_colour_a_bundle_alike(plugin_viewer, plugin_dock, cmu_slide: Path, qtbot,
                                                                  notes, student: str) -> None:
    """The Zero-shot tab's classifier source and the Refine tab's Apply classifier are one path
    (``_widgets._apply_classifier``): the same map, colours, colormap and legend for a bundle."""
    from napari_histoclip._layers import UNKNOWN_COLOR
    from napari_histoclip._widgets._zeroshot import CLASSIFIER

    viewer, dock = plugin_viewer, plugin_dock
    open_slide(viewer, cmu_slide)
    values = np.arange(len(NAMES) + 2)  # background, the classes, "unknown"

    def shown() -> tuple:
        layer = viewer.layers[MAP]
        return (np.asarray(layer.data).copy(), list(layer.metadata["colors"]), layer.metadata["classifier"],
                np.asarray(layer.colormap.map(values)))

    dock.zero_shot.source.value = CLASSIFIER
    dock.zero_shot.classifier.value = student
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    data, colors, source, rgba = shown()
    legend = dock.zero_shot.legend.value
    viewer.layers.remove(MAP)  # the Refine tab's apply must make the map anew, not inherit it

    dock.refine.save_path.value = student
    dock.refine.apply_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    data2, colors2, source2, rgba2 = shown()
    assert colors == colors2 == ["#{:02x}{:02x}{:02x}".format(*c) for c in COLORS]  # the bundle's own colours
    assert source == source2 == student
    np.testing.assert_array_equal(data, data2)
    np.testing.assert_array_equal(rgba, rgba2)
    np.testing.assert_allclose(rgba2[-1][:3], [int(UNKNOWN_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)], atol=1e-6)
    assert dock.refine.legend.value == legend  # the Refine tab's legend is the Zero-shot tab's


def test_a_class_added_to_a_classifier_map_keeps_its_colour_in_the_saved_bundle(
        plugin_viewer, plugin_dock, cmu_slide: Path, qtbot, notes, student: str, tmp_path: Path) -> None:
    """One colour per class name (issue 21 item 6): "Add class" on a map of a bundle with its own
    colours, painted, refined and saved: the new bundle colours the class as the brush did
    (``backend.palette.new_class_rgb`` in the dock and in the backend's head)."""
    from backend.models.classifier import load_classifier
    from backend.palette import to_hex
    from napari_histoclip._widgets._zeroshot import CLASSIFIER
    from tests.support.mouse import paint_cell

    viewer, dock = plugin_viewer, plugin_dock
    open_slide(viewer, cmu_slide)
    dock.zero_shot.source.value = CLASSIFIER
    dock.zero_shot.classifier.value = student
    dock.zero_shot.run_button.native.click()
    wait(qtbot, dock)
    layer = viewer.layers[MAP]
    dock.refine.new_class.value = "folds"
    dock.refine.add_class_button.native.click()
    assert not notes.errors, notes.errors
    brush = layer.metadata["colors"][-1]
    assert brush not in [to_hex(c) for c in COLORS]
    tissue = [tuple(int(v) for v in rc) for rc in np.argwhere(np.asarray(layer.data) > 0)]
    for cell in tissue[:3]:
        paint_cell(qtbot, viewer, layer, cell, len(NAMES) + 1)
    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert viewer.layers[MAP].metadata["colors"][-1] == brush  # the refined map keeps it
    dock.refine.save_path.value = str(tmp_path / "with-folds")
    dock.refine.save_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    saved = load_classifier(tmp_path / "with-folds")
    assert saved.class_names == (*NAMES, "folds")
    assert [to_hex(c) for c in saved.head.colors] == [*(to_hex(c) for c in COLORS), brush]
