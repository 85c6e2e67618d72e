"""An image-only encoder in the dock napari's Plugins menu makes: the text controls are greyed
out with a tooltip saying why, region search over an index built with it answers, and Refine
starts from marks alone (classes added, tiles painted by mouse, Refine, the unsure list, save
as classifier). The model is ``test-tiny``'s image tower as a ``towers: "image"`` bundle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support.dock_helpers import open_slide
from tests.support.mouse import paint_cell

pytestmark = [pytest.mark.gui, pytest.mark.slow]
MAP = "CMU-1-Small-Region: class map"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=180_000)


def test_text_controls_are_disabled_and_region_search_answers(
    plugin_dock, plugin_viewer, qtbot, cmu_slide: Path, image_only_model: Path, tmp_path: Path, notes
) -> None:
    from napari_histoclip._widgets._zeroshot import CLASSIFIER, TEXT_PROMPTS

    dock, viewer = plugin_dock, plugin_viewer
    zs, search = dock.zero_shot, dock.search
    text_controls = (zs.run_button, zs.heatmap_button, zs.query, search.text_button, search.text)
    assert all(w.enabled for w in text_controls)  # test-tiny embeds text
    dock.model_other.value = str(image_only_model)
    assert not any(w.enabled for w in text_controls)
    assert zs.run_button.tooltip.startswith("tiny-vision embeds images only: zero-shot needs a vision-language model")
    assert zs.heatmap_button.tooltip.startswith("tiny-vision embeds images only: a text heatmap needs")
    assert search.text_button.tooltip.startswith("tiny-vision embeds images only: text search needs")
    zs.source.value = CLASSIFIER  # applying a classifier needs images only
    assert zs.run_button.enabled and not zs.heatmap_button.enabled
    zs.source.value = TEXT_PROMPTS
    assert not zs.run_button.enabled
    dock.model_other.value = ""
    assert all(w.enabled for w in text_controls)
    assert zs.query.tooltip == "e.g. 'tumor cells with mitoses'" and zs.heatmap_button.tooltip is None  # their own again
    dock.model_other.value = str(image_only_model)

    # Find similar by shape over an index built with the image-only model (the dock's own button).
    slide = open_slide(viewer, cmu_slide)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    os.symlink(cmu_slide, cohort / cmu_slide.name)
    search.folder.value = cohort
    search.index_folder.value = tmp_path / "index"
    search.build_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    shapes = viewer.add_shapes([[[600, 600], [600, 1600], [1600, 1600], [1600, 600]]], shape_type="rectangle",
                               scale=slide.scale, units=slide.units)
    shapes.selected_data = {0}
    viewer.layers.selection.active = shapes
    search.exclude.value = False
    search.k.value = 3
    search.shape_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    assert 0 < search.results.count() <= 3
    assert "CMU-1-Small-Region" in search.results.item(0).text()


def test_refine_from_marks_alone_in_the_dock(
    plugin_dock, plugin_viewer, qtbot, cmu_slide: Path, image_only_model: Path, tmp_path: Path, notes
) -> None:
    from backend.models.classifier import load_classifier

    dock, viewer = plugin_dock, plugin_viewer
    dock.model_other.value = str(image_only_model)
    open_slide(viewer, cmu_slide)
    dock.refine.start_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    layer = viewer.layers[MAP]
    assert layer.metadata["labels"] == [] and set(np.unique(layer.data)) == {0, 1}  # tissue: "unknown"
    for name in ("tumor", "stroma"):
        dock.refine.new_class.value = name
        dock.refine.add_class_button.native.click()
    assert not notes.errors, notes.errors
    assert layer.metadata["labels"] == ["tumor", "stroma"] and set(np.unique(layer.data)) == {0, 3}

    tissue = [tuple(int(v) for v in rc) for rc in np.argwhere(np.asarray(layer.data) > 0)]
    wanted = {tissue[0]: 1, tissue[1]: 1, tissue[-1]: 2, tissue[-2]: 2}
    viewer.reset_view()
    for cell, value in wanted.items():
        paint_cell(qtbot, viewer, layer, cell, value)
    assert dock.refine.slides[str(cmu_slide)].marks == {c: ("tumor", "stroma")[v - 1] for c, v in wanted.items()}

    dock.refine.refine_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    refined = viewer.layers[MAP]
    assert refined.metadata["labels"] == ["tumor", "stroma"]
    for cell, value in wanted.items():
        assert refined.data[cell] == value
    assert set(np.unique(refined.data)) == {0, 1, 2}  # every tissue tile has a class now
    assert dock.refine.unsure.count() == 10  # "where is it unsure?"
    assert not set(dock.refine._unsure_cells) & set(wanted)

    dock.refine.save_path.value = str(tmp_path / "clf")
    dock.refine.save_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    clf = load_classifier(tmp_path / "clf")
    assert clf.head.class_names == ("tumor", "stroma") and clf.card["prior"] == "none (marks only)"
    assert clf.model_id.startswith("bundle:tiny-vision@")
