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


# --- item 9: a first run offline ------------------------------------------------------------


def _hand_made_hub_cache(root: Path, repo: str, files: tuple[str, ...]) -> Path:
    """A Hugging Face hub cache holding ``files`` (empty stand-ins) of ``repo`` at ``main``."""
    rev = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True)
    for name in files:
        (snap / name).write_bytes(b"{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    return root


def test_the_dock_says_the_default_model_is_not_on_disk_before_anything_is_pressed(
        plugin_dock, tmp_path: Path, monkeypatch, notes) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    dock = plugin_dock
    dock.refresh_models()
    dock.model.value = "quiltnet-b32"  # the registry's first model, the default of a first run
    assert dock.model_note.visible
    assert dock.model_note.value.startswith("quiltnet-b32: weights not on disk yet")
    assert "(not downloaded)" in dock.model.native.currentText()
    dock.model.value = "test-tiny"  # built in: nothing to download
    assert not dock.model_note.visible
    dock.model.value = "quiltnet-b32"
    dock.model_other.value = "hf-hub:someone/else"  # the typed model is used instead: no note on the list's
    assert not dock.model_note.visible
    assert not notes.errors, notes.errors


def test_a_cached_hub_model_gets_no_note(plugin_dock, tmp_path: Path, monkeypatch) -> None:
    hub = _hand_made_hub_cache(tmp_path / "hub", "wisdomik/QuiltNet-B-32",
                               ("open_clip_config.json", "open_clip_pytorch_model.bin"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    plugin_dock.refresh_models()
    plugin_dock.model.value = "quiltnet-b32"
    assert not plugin_dock.model_note.visible
    assert plugin_dock.model.native.currentText() == "quiltnet-b32"


def test_a_failed_task_shows_its_headline_and_the_whole_text_on_demand(plugin_dock, plugin_viewer, qtbot, cmu_slide,
                                                                       notes) -> None:
    from dock_helpers import open_slide

    open_slide(plugin_viewer, cmu_slide)
    dock = plugin_dock
    dock.model_other.value = "hf-hub:nobody/not-cached"
    dock.embed_button.native.click()
    wait(qtbot, dock)
    panel = dock.error_panel
    assert len(notes.errors) == 1, notes.errors
    toast = notes.errors[0]
    assert panel.isVisibleTo(dock)
    assert panel.headline.text() == toast
    assert toast.endswith("(Embedding CMU-1-Small-Region.svs)")
    assert "nobody/not-cached" in toast[:40]
    full = panel.details.toPlainText()
    assert len(full) > len(toast) and "HF_HUB_OFFLINE" in full  # the remedy, on demand
    assert not panel.details.isVisibleTo(dock)
    panel.details_button.click()
    assert panel.details.isVisibleTo(dock)
    panel.close_button.click()
    assert not panel.isVisibleTo(dock)
