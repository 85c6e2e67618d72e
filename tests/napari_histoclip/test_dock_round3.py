"""Dock fixes of issue 21 (napari items 7, 9, 11) through the Plugins-menu path, on the numpy
double (fast and deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


@pytest.fixture
def dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide):
    """The dock as Plugins > HistoCLIP makes it, on the numpy double, CMU opened by the reader."""
    from dock_helpers import slide_dock

    return slide_dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide)


def wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=WAIT_MS)


def test_fewer_hits_than_asked_say_why_in_the_dock(dock, fake_backend, qtbot, tmp_path: Path, cmu_slide, notes,
                                                    monkeypatch) -> None:
    from backend.api import SearchHit, SearchResult

    why = "3 of 12 hits: the index's 40 searchable tiles form only 3 separate places"

    def few(request, *, progress=None, cancel=None):  # noqa: ANN001, ANN202
        hits = tuple(SearchHit("CMU-1-Small-Region", str(cmu_slide), (224.0 * i, 0.0, 448.0, 448.0), 0.3, 4)
                     for i in range(3))
        return SearchResult(hits, note=why)

    monkeypatch.setattr(fake_backend, "search", few)
    panel = dock.search
    panel.index.value = tmp_path
    panel.text.value = "tumor"
    panel.text_button.native.click()
    wait(qtbot, dock)
    assert not notes.errors, notes.errors
    assert panel.results.count() == 3
    assert panel.note.isVisibleTo(panel.native) and panel.note.text() == why
    assert any(why in m for m in notes.infos)
