"""Error notifications lead with their cause: napari's toast shows one elided line."""

from __future__ import annotations

import pytest

from backend.errors import InputError, SlideReadError
from napari_histoclip._tasks import task_error_message
from tests.support.dock_helpers import open_slide

#: About what the first line of napari's fixed-width toast shows before eliding.
TOAST_FIRST_LINE = 40


def test_the_cause_comes_first_on_one_line() -> None:
    msg = task_error_message("Zero-shot on CMU-1-Small-Region.svs", InputError("template 'a {0}':\nbad field"))
    assert msg == "template 'a {0}': bad field (Zero-shot on CMU-1-Small-Region.svs)"
    slide = SlideReadError("/x/kidney.tif", "reading tile 3 failed: Bogus marker length")
    assert task_error_message("Embedding kidney.tif", slide) == "reading tile 3 failed: Bogus marker length (Embedding kidney.tif)"
    assert task_error_message("Searching", KeyError("x")) == "KeyError: 'x' (Searching)"


@pytest.mark.gui
def test_a_failed_task_from_the_plugin_dock_shows_its_cause_first(plugin_dock, plugin_viewer, qtbot, cmu_slide, notes) -> None:
    open_slide(plugin_viewer, cmu_slide)
    plugin_dock.model_other.value = "hf-hub:nobody/not-cached"
    plugin_dock.embed_button.native.click()
    qtbot.waitUntil(lambda: not plugin_dock.runner.busy, timeout=60_000)
    assert len(notes.errors) == 1, notes.errors
    msg = notes.errors[0]
    assert "\n" not in msg
    assert "nobody/not-cached" in msg[:TOAST_FIRST_LINE], msg
    assert msg.endswith("(Embedding CMU-1-Small-Region.svs)")
