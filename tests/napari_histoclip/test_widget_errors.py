"""The dock's error paths, cancel and sync mode, against the numpy test double (fast and
deterministic; the dock's main paths are tested on the real backend in test_widgets_local)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_histoclip._slide import slide_of
from napari_histoclip._widgets._main import HistoclipWidget

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


@pytest.fixture
def dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide):
    """The dock as Plugins > HistoCLIP makes it, on the numpy double, CMU opened by the reader."""
    from tests.support.dock_helpers import slide_dock

    return slide_dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide)


def wait(qtbot, widget: HistoclipWidget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


def test_header_lists_models_and_follows_the_open_slide(dock) -> None:
    assert dock.model.value == "fake-clip"
    assert dock.slide.value is not None and slide_of(dock.slide.value).name == "CMU-1-Small-Region.svs"


def test_errors_become_notifications(plugin_dock, plugin_viewer, fake_backend, qtbot, notes) -> None:
    from backend.errors import SlideReadError
    from tests.support.dock_helpers import open_slide, with_backend

    widget = with_backend(plugin_dock, fake_backend)
    widget.zero_shot.run_button.native.click()  # no slide open
    assert notes.errors[-1].startswith("Slide: open a whole-slide image first")
    widget.embed_button.native.click()
    assert len(notes.errors) == 2

    open_slide(plugin_viewer, Path(__file__).parents[2] / "../shared/testdata/slides/kidney-48-5.tif")
    widget.set_mpp("0.5")  # the kidney TIFF records no µm/px
    widget.zero_shot.prompts.set_rows([])
    widget.zero_shot.run()
    assert "at least 2 classes" in notes.errors[-1]
    fake_backend.fail_with = SlideReadError("kidney-48-5.tif", "reading tile 3 failed: Bogus marker length")
    widget.embed()
    wait(qtbot, widget)
    assert notes.errors[-1] == "reading tile 3 failed: Bogus marker length (Embedding kidney-48-5.tif)"
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


def test_a_closed_dock_stops_listening(dock, plugin_viewer, slides_dir) -> None:
    """After the dock is closed, layer changes reach no deleted widget."""
    from tests.support.dock_helpers import open_slide

    shapes = dock.captions.new_layer()
    before = dock.slide.value
    dock.disconnect_viewer()
    open_slide(plugin_viewer, slides_dir / "kidney-48-5.tif")
    assert dock.slide.value is before  # a connected dock would have switched to the new slide
    shapes.selected_data = {0} if len(shapes.data) else set()
    assert dock.captions._watched is None


def test_injected_backend_survives_a_device_change(dock, fake_backend, qtbot) -> None:
    """An injected backend (a remote one especially) picks its own device: a device change
    keeps it, and the dock still works through it."""
    dock.device.value = "cpu"
    assert dock.backend is fake_backend
    dock.zero_shot.run()
    wait(qtbot, dock)
    assert "zero_shot" in fake_backend.calls


def test_fake_maps_are_the_same_in_every_process(cmu_slide) -> None:
    """The test double's class maps do not depend on PYTHONHASHSEED (``hash(str)`` does)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, hashlib;"
        "from tests.support.fakes import FakeBackend; from backend.api import SlideRef, ZeroShotRequest;"
        "r = FakeBackend().zero_shot(ZeroShotRequest(SlideRef(sys.argv[1]), 'fake-clip',"
        " ('tumor', 'stroma', 'necrosis', 'fat', 'mucosa', 'lymphocytes')));"
        "print(hashlib.sha1(r.probabilities.tobytes()).hexdigest())"
    )
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(cmu_slide)], cwd=Path(__file__).parents[2],  # tests.support
                             env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
