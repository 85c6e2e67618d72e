"""The Caption tab's decoding options follow the backend's DecodeConfig (defaults and limits)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.caption import DecodeConfig

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide):
    """The dock as Plugins > HistoCLIP makes it, on the numpy double, CMU opened by the reader."""
    from tests.support.dock_helpers import slide_dock

    return slide_dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide)


def test_dock_defaults_are_the_backends(dock) -> None:
    assert dock.captions.max_tokens.value == DecodeConfig().max_new_tokens == 30
    assert dock.captions.beams.value == DecodeConfig().num_beams


def test_n_best_above_beams_is_an_error_not_a_silent_clamp(dock, fake_backend, notes, tmp_path) -> None:
    panel = dock.captions
    shapes = panel.new_layer()
    shapes.add_rectangles(np.array([[100, 100], [400, 400]]))
    panel.captioner.value = tmp_path
    panel.beams.value, panel.n_best.value = 2, 4
    panel.caption()
    assert "n_best: 4 exceeds num_beams=2" in notes.errors[-1]
    assert "caption" not in fake_backend.calls  # refused before any work
