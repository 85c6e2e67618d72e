"""The dock checks prompts with the backend's validator before starting any work."""

from __future__ import annotations

import pytest

from napari_histoclip._widgets._prompts import PromptRow
from tests.support.dock_helpers import open_slide

pytestmark = pytest.mark.gui


@pytest.mark.parametrize(
    ("rows", "templates", "says"),
    [
        (["Tumor ", "tumor", "fat"], "", "'Tumor' and 'tumor' are the same class"),
        (["tumor  cells", "Tumor cells"], "", "'tumor  cells' and 'Tumor cells' are the same class"),
        (["tumor", "stroma"], "an H&E image of {0}", "{0} is not allowed"),
        (["tumor", "stroma"], "an H&E image of {} and {}", "has 2 {}"),
        (["tumor"], "", "at least 2 classes"),
    ],
)
def test_bad_prompts_are_refused_before_any_work(plugin_dock, plugin_viewer, cmu_slide, tmp_path, notes, rows, templates, says) -> None:
    open_slide(plugin_viewer, cmu_slide)  # read in the dock's runner: a task of its own
    runner = plugin_dock.runner
    started = []
    runner.run = lambda *a, **k: started.append(a[0]) or True  # any task from here on is seen
    panel = plugin_dock.zero_shot
    panel.prompts.set_rows([PromptRow(r, "#ff0000") for r in rows])
    panel.templates.value = templates
    panel.run_button.native.click()
    assert len(notes.errors) == 1 and says in notes.errors[0], notes.errors
    assert not runner.busy and not started  # no task ran
