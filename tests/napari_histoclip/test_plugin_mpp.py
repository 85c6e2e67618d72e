"""Slides without mpp through the plugin path: opened beside slides in µm (one unit, no
warning, the µm slides at their true sizes), given a µm/px in the dock (remembered per slide),
then used by zero-shot, caption, search and index building like any slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.dock_helpers import open_slide

pytestmark = pytest.mark.gui

TCGA = "tcga-cr-7395-01a-01-ts1.svs"  # 4443 x 3567, no mpp in its metadata
NDPI = "test3-DAPI-2-(387).ndpi"  # 0.2282 µm/px


@pytest.fixture
def shown(qtbot):
    """Every notification napari shows (the canvas imports its ``show_warning`` itself, so
    patching ``napari.utils.notifications`` would miss the units warning): (severity, text)."""
    from napari.utils.notifications import notification_manager

    got: list[tuple[str, str]] = []

    def take(n) -> None:  # noqa: ANN001
        got.append((str(n.severity), n.message))

    notification_manager.notification_ready.connect(take)
    yield got
    notification_manager.notification_ready.disconnect(take)


def problems(shown: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(s, m) for s, m in shown if s not in ("info", "none")]


def draw(viewer, qtbot) -> None:
    """Let napari draw, as its event loop does between a user's actions: it checks the layers'
    units on a draw. (Many layer changes with no draw between them, then one paint, crashed
    llvmpipe in glDrawArrays here a few times: a state a user's session never reaches.)"""
    viewer.window._qt_viewer.canvas._scene_canvas.render()
    qtbot.wait(50)


class Spy:
    """Wraps the dock's backend and records the requests the dock sends."""

    def __init__(self, backend) -> None:  # noqa: ANN001
        self.backend, self.requests = backend, []

    def __getattr__(self, name: str):  # noqa: ANN204
        real = getattr(self.backend, name)
        if name not in ("zero_shot", "caption", "search", "build_index", "embed_slide"):
            return real

        def call(request, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            self.requests.append((name, request))
            return real(request, *args, **kwargs)

        return call


def test_a_slide_without_mpp_beside_slides_in_um_keeps_one_unit_and_true_sizes(plugin_dock, plugin_viewer, qtbot, slides_dir, cmu_slide, shown, tmp_path) -> None:
    viewer = plugin_viewer
    viewer.canvas.overlays.scale_bar.visible = True
    cmu = open_slide(viewer, cmu_slide)
    ndpi = open_slide(viewer, slides_dir / NDPI)
    tcga = open_slide(viewer, slides_dir / TCGA)
    draw(viewer, qtbot)
    assert [str(u) for u in viewer.layers.units] == ["micrometer"] * 2
    for layer in (cmu, ndpi, tcga):
        assert [str(u) for u in layer.units] == ["micrometer"] * 2, layer.name
    # The µm slides at their true sizes (2220 x 2967 px at 0.499, 3968 x 4864 at 0.2282)...
    assert cmu.extent.world[1] == pytest.approx([2967 * 0.499, 2220 * 0.499], rel=1e-3)
    assert ndpi.extent.world[1] == pytest.approx([4864 * 0.2282, 3968 * 0.2282], rel=1e-3)
    # ... drawn without a hidden unit conversion; the slide without mpp where its pixels were.
    assert np.allclose(tcga.scale, 1.0)
    for visual in viewer.window._qt_viewer.canvas.layer_to_visual.values():
        assert np.allclose(visual._world_to_layer_units_scale, 1.0)
    assert not problems(shown), problems(shown)
    nominal = [m for _, m in shown if m.startswith(TCGA)]
    assert nominal and "µm/px field under Slide in the HistoCLIP dock" in nominal[0]

    # Given its µm/px, it joins the µm world at its true size; removed µm slides leave pixels.
    plugin_dock.slide.value = tcga
    assert not plugin_dock.mpp.native.isReadOnly()
    plugin_dock.mpp.value = "0.25"
    plugin_dock.mpp.native.editingFinished.emit()
    assert tcga.extent.world[1] == pytest.approx([3567 * 0.25, 4443 * 0.25], rel=1e-3)
    plugin_dock.slide.value = cmu
    assert plugin_dock.mpp.native.isReadOnly() and plugin_dock.mpp.value == "0.499"
    draw(viewer, qtbot)
    viewer.screenshot(str(tmp_path / "mixed-units.png"), canvas_only=False)
    assert not problems(shown), problems(shown)


def test_the_other_order_and_a_slide_without_mpp_alone(plugin_viewer, qtbot, slides_dir, cmu_slide, shown) -> None:
    """No dock: the reader alone keeps one unit, whichever kind of slide comes first."""
    viewer = plugin_viewer
    tcga = open_slide(viewer, slides_dir / TCGA)
    draw(viewer, qtbot)
    assert [str(u) for u in tcga.units] == ["pixel"] * 2  # alone: the scale bar counts pixels
    cmu = open_slide(viewer, cmu_slide)
    draw(viewer, qtbot)
    assert [str(u) for u in tcga.units] == ["micrometer"] * 2 and np.allclose(tcga.scale, 1.0)
    viewer.layers.remove(cmu)
    draw(viewer, qtbot)
    assert [str(u) for u in tcga.units] == ["pixel"] * 2
    assert not problems(shown), problems(shown)


# tiny_captioner first: it imports torch, which must happen before napari's canvas maps Mesa
# (napari_histoclip._compat: triton's LLVM after Mesa's crashes the next draw).
def test_a_slide_without_mpp_works_in_the_dock_once_given_and_is_remembered(tiny_captioner, plugin_dock, plugin_viewer, qtbot, slides_dir, tmp_path, _isolated_config, notes) -> None:
    dock, viewer = plugin_dock, plugin_viewer
    from napari_histoclip._widgets._main import local_backend

    dock.use_backend_factory(lambda device: Spy(local_backend(device)))  # made by the dock: closed with it
    spy = dock.backend
    tcga = open_slide(viewer, slides_dir / TCGA)
    assert dock.slide.value is tcga or dock.slide.value == tcga
    from napari_histoclip._widgets._prompts import PromptRow

    dock.zero_shot.prompts.set_rows([PromptRow("tumor", "#ff0000"), PromptRow("stroma", "#00ff00")])

    # Without a value, a task says which slide needs one and where to give it; nothing runs.
    dock.zero_shot.run_button.native.click()
    assert notes.errors and TCGA in notes.errors[-1] and "µm/px field under Slide" in notes.errors[-1]
    assert not dock.runner.busy and not spy.requests
    notes.errors.clear()

    # 0.125 µm/px: tiles of 224 px at 0.5 µm/px are 896 px of this slide (a 5 x 4 grid: quick)
    dock.mpp.value = "0,125"  # a decimal comma is taken
    dock.mpp.native.editingFinished.emit()
    qtbot.waitUntil(lambda: not dock.runner.quiet_busy, timeout=20_000)
    assert tcga.scale == pytest.approx([0.125, 0.125])
    saved = json.loads((_isolated_config / "dock.json").read_text())
    assert list(saved["slide_mpp"].values()) == [0.125]

    draw(viewer, qtbot)
    # Zero-shot and a caption of a drawn region carry it, and their layers sit on the slide.
    dock.zero_shot.run_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=120_000)
    assert not notes.errors, notes.errors
    class_map = viewer.layers["tcga-cr-7395-01a-01-ts1: class map"]
    assert class_map.extent.world[1] == pytest.approx(tcga.extent.world[1], abs=112)  # within a tile
    draw(viewer, qtbot)
    regions = dock.captions.new_layer()
    regions.add_rectangles(np.array([[500, 500], [1400, 1400]]))
    dock.captions.captioner.value = tiny_captioner
    dock.captions.caption_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=120_000)
    assert not notes.errors, notes.errors

    draw(viewer, qtbot)
    # A cohort index of a folder with it: built with its value; a region search from it.
    folder = tmp_path / "cohort"
    folder.mkdir()
    (folder / TCGA).symlink_to(slides_dir / TCGA)
    dock.search.folder.value = folder
    dock.search.index_folder.value = tmp_path / "index"
    dock.search.build_index()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=120_000)
    assert not notes.errors and not [w for w in notes.warnings if "left out" in w], notes.warnings
    draw(viewer, qtbot)
    regions.selected_data = {0}
    viewer.layers.selection.active = regions
    dock.search.exclude.value = False
    dock.search.search_shape()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=120_000)
    assert not notes.errors, notes.errors
    assert dock.search.hits and dock.search.hits[0].hit.slide_name.startswith("tcga")

    draw(viewer, qtbot)
    refs = {name: (r.slide.mpp if name != "build_index" else r.slide_mpp) for name, r in spy.requests}
    assert refs == {"zero_shot": 0.125, "caption": 0.125, "build_index": 0.125, "search": 0.125}, spy.requests

    draw(viewer, qtbot)
    # Opened again (a new session): the value comes back by itself.
    viewer.layers.clear()
    draw(viewer, qtbot)
    tcga = open_slide(viewer, slides_dir / TCGA)
    qtbot.waitUntil(lambda: tcga.scale[0] == pytest.approx(0.125), timeout=20_000)
    draw(viewer, qtbot)
    assert dock.mpp.value == "0.125"
    assert any("as you gave it before" in m for m in notes.infos), notes.infos


def test_index_building_says_which_slides_need_a_mpp_and_where(plugin_dock, qtbot, slides_dir, cmu_slide, tmp_path, notes) -> None:
    dock = plugin_dock
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in (cmu_slide.name, TCGA):
        (folder / name).symlink_to(slides_dir / name)
    dock.search.folder.value = folder
    dock.search.build_index()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=120_000)
    assert not notes.errors, notes.errors
    left = [w for w in notes.warnings if TCGA in w]
    assert left and "µm/px field under Slide in the HistoCLIP dock" in left[0], notes.warnings
    assert any("1 slides" in m for m in notes.infos), notes.infos  # CMU went in
