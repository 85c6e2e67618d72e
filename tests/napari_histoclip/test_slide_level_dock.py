"""Slide-level answers through the dock napari's Plugins menu makes: the Zero-shot tab's
whole-slide verdict with its evidence tiles (listed, outlined, a click frames one), the cohort
triage table (sorted by a class's probability, a click opens the slide), and Find similar's
"Slides like this one" (a click opens the slide)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.dock_helpers import open_slide

pytestmark = pytest.mark.gui
NDPI = "test3-DAPI-2-(387).ndpi"


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=300_000)


def test_verdict_evidence_triage_and_slides_like_this(plugin_viewer, plugin_dock, cmu_slide: Path, slides_dir: Path,
                                                       tmp_path: Path, qtbot, notes) -> None:
    from backend.api import SlideRef, SlideZeroShotRequest

    viewer, dock = plugin_viewer, plugin_dock
    zs = dock.zero_shot
    open_slide(viewer, cmu_slide)
    zs.top_k.value = 5
    zs.slide_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors

    labels = tuple(r.label for r in zs.prompts.rows())
    expected = dock.backend.slide_zero_shot(SlideZeroShotRequest(SlideRef(str(cmu_slide)), "test-tiny", labels, k=5))
    line = zs.verdict.verdict.value
    p = round(100 * expected.probability(expected.predicted))
    assert line.startswith(f"Whole slide: {expected.predicted} ({p} %), runner-up: {expected.runner_up}"), line
    assert f"top-5 of {expected.n_tiles} tiles" in line
    assert zs.verdict.evidence.count() == len(expected.evidence) == 5 * len(labels)
    outlines = viewer.layers["CMU-1-Small-Region: search hits"]
    assert len(outlines.data) == len(expected.evidence)

    row = 6  # a tile of the second class
    zs.verdict.evidence.itemClicked.emit(zs.verdict.evidence.item(row))
    assert not notes.errors, notes.errors
    x, y, w, h = expected.evidence[row].box
    s = viewer.layers["CMU-1-Small-Region.svs"].scale[-1]
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx(((y + h / 2 - 0.5) * s, (x + w / 2 - 0.5) * s))
    assert viewer.layers["CMU-1-Small-Region: search hits"].selected_data == {row}

    # Triage of a cohort: a table sorted by one class's probability; a click opens that slide.
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in (cmu_slide.name, NDPI):
        os.symlink(slides_dir / name, cohort / name)
    zs.triage.cohort.value = cohort
    zs.triage.run_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    table = zs.triage.table
    assert table.rowCount() == 2 and table.columnCount() == 2 + len(labels)
    zs.triage.sort_by(labels[1])
    column = [float(table.item(r, 3).text()) for r in range(2)]
    assert column == sorted(column, reverse=True)
    row = next(r for r in range(2) if table.item(r, 0).text() == NDPI)
    table.cellClicked.emit(row, 2)
    ndpi = viewer.layers[NDPI]
    assert ndpi.visible and not viewer.layers["CMU-1-Small-Region.svs"].visible
    assert dock.slide.value.name == NDPI

    # Find similar: "Slides like this one" from the NDPI finds CMU-1; a click opens it.
    search = dock.search
    search.folder.value = cohort
    search.build_button.native.click()
    wait(qtbot, dock)
    search.like.button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    assert [h.slide_name for h in search.like.hits] == [cmu_slide.name]
    search.like.results.itemClicked.emit(search.like.results.item(0))
    assert viewer.layers["CMU-1-Small-Region.svs"].visible and not ndpi.visible
