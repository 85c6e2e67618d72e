"""The footer on first use: the "loading model" stage shows (a busy bar, not a silent
"Embedding X"), a Cancel click shows at once and takes effect once loading returns."""

from __future__ import annotations

import time

import pytest

from backend.api import Progress, TileOptions
from backend.errors import CancelledError
from tests.support.dock_helpers import open_slide

pytestmark = pytest.mark.gui
LOAD_S = 0.6


def record_footer(dock, stamp: bool = False) -> list:
    """Every footer text, as the runner reports states (a Label emits no change signal)."""
    shown: list = []
    show = dock.runner._on_state

    def record(state) -> None:
        show(state)
        shown.append((time.perf_counter(), dock.status.value) if stamp else dock.status.value)

    dock.runner._on_state = record
    return shown


class SlowModelLoad:
    """Wraps the test double: embedding starts with a model load that cannot be interrupted,
    reported as the backend reports it (interfaces item 2), then checks the cancel event."""

    def __init__(self, fake) -> None:
        self.fake = fake

    def __getattr__(self, name):
        return getattr(self.fake, name)

    def embed_slide(self, slide, model, tiles=TileOptions(), *, progress=None, cancel=None):
        progress(Progress(0, 0, f"loading model {model}"))
        end = time.perf_counter() + LOAD_S
        while time.perf_counter() < end:  # torch imports: the cancel event is not looked at
            time.sleep(0.01)
        progress(Progress(0, 0, "opening the slide"))
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"cancelled after loading {model}")
        return self.fake.embed_slide(slide, model, tiles, progress=progress, cancel=cancel)


def test_the_footer_shows_loading_and_a_cancel_at_once(plugin_dock, plugin_viewer, qtbot, cmu_slide, fake_backend, notes) -> None:
    dock = plugin_dock
    dock.use_backend(SlowModelLoad(fake_backend))
    open_slide(plugin_viewer, cmu_slide)
    shown = record_footer(dock)
    dock.embed_button.native.click()
    qtbot.waitUntil(lambda: "loading model" in dock.status.value, timeout=10_000)
    assert dock.status.value == "Embedding CMU-1-Small-Region.svs: loading model test-tiny"
    assert (dock.progress.min, dock.progress.max) == (0, 0)  # Qt's busy bar: unknown length
    dock.cancel_button.native.click()
    after = len(shown)
    assert dock.status.value.startswith("cancelling…") and not dock.cancel_button.enabled
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=10_000)
    assert "Embedding CMU-1-Small-Region.svs: cancelled" in notes.infos
    later = shown[after:-1]  # until "ready"
    assert all(t.startswith("cancelling…") for t in later), later
    # the load cannot be interrupted: the task is let go (issue 21), the dock free at once
    assert dock.runner.background == 1
    qtbot.waitUntil(lambda: dock.runner.background == 0, timeout=10_000)
    assert shown[-1] == "ready" and "embed_slide" not in fake_backend.calls


@pytest.mark.slow
def test_first_use_of_the_local_backend_shows_loading_the_model(plugin_dock, plugin_viewer, qtbot, cmu_slide, notes) -> None:
    """Cancel clicked while the model loads: the task stops once loading returns, before it
    encodes a tile (counted, not timed: the machine may be shared)."""
    import re

    dock = plugin_dock
    open_slide(plugin_viewer, cmu_slide)
    shown = record_footer(dock)
    dock.embed_button.native.click()
    dock.cancel_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=600_000)  # a first torch import, shared cores
    assert "Embedding CMU-1-Small-Region.svs: cancelled" in notes.infos, notes.infos
    assert any("loading model test-tiny" in text for text in shown), shown
    done = [int(m.group(1)) for text in shown if (m := re.search(r" (\d+)/(\d+)\)?$", text))]
    assert not any(done), f"tiles were encoded after the cancel: {shown}"
    # a load that does not stop within the grace is let go (issue 21): it ends in the background
    qtbot.waitUntil(lambda: dock.runner.background == 0, timeout=600_000)
