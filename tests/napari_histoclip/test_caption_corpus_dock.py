"""Captions from a corpus and their grounding through the plugin path (Plugins > HistoCLIP, a
polygon drawn with the mouse, the dock's own LocalBackend with test-tiny)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoclip._shapes import CAPTION, nbest_sources
from napari_histoclip._widgets._caption import CaptionSource
from napari_histoclip._widgets._grounding import describe_tile
from tests.support.dock_helpers import open_slide
from tests.support.mouse import click, draw_polygon

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT_MS = 300_000
TEXTS = ("dense fibrous stroma with lymphocytes", "squamous epithelium", "adipose tissue", "tumour glands in stroma")


def test_corpus_caption_on_a_polygon_then_its_grounding_and_a_clicked_tile(plugin_dock, plugin_viewer, qtbot,
                                                                           tmp_path, notes, cmu_slide) -> None:
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    slide = open_slide(plugin_viewer, cmu_slide)
    plugin_viewer.reset_view()
    panel = plugin_dock.captions
    assert CaptionSource.CORPUS.value in panel.source.choices  # test-tiny embeds text too
    panel.source.value = CaptionSource.CORPUS.value
    assert not panel.corpus.native.isHidden() and panel.captioner.native.isHidden()  # (the tab itself is not shown)
    panel.corpus.value = corpus
    panel.n_best.value = 2
    panel.new_layer_button.native.click()
    layer = plugin_viewer.layers[-1]
    j = draw_polygon(qtbot, plugin_viewer, layer, [(300, 300), (500, 1900), (1900, 1500)])
    panel.caption_button.native.click()
    qtbot.waitUntil(lambda: not plugin_dock.runner.busy, timeout=WAIT_MS)
    assert not notes.errors, notes.errors
    options = nbest_sources(layer, j)
    assert len(options) == 2 and all(t in TEXTS and src.startswith("line ") for t, _, src in options)
    assert layer.features[CAPTION].iloc[j] == options[0][0]
    assert "[from line" in panel.nbest_list.item(0).text()

    layer.selected_data = {j}
    panel.show_shape(j)
    panel.grounding.button.native.click()
    qtbot.waitUntil(lambda: not plugin_dock.runner.busy, timeout=WAIT_MS)
    assert not notes.errors, notes.errors
    maps = [lyr for lyr in plugin_viewer.layers if lyr.metadata.get("kind") == "grounding"]
    tiles = next(lyr for lyr in plugin_viewer.layers if lyr.metadata.get("kind") == "grounding_tiles")
    assert maps and maps[0].metadata["text"] == options[0][0] and maps[0].metadata["method"] == "similarity"
    # Aligned with the slide: every supported map cell's centre lies in the polygon's bounding box (world)
    poly = np.array([layer.data_to_world(v) for v in np.asarray(layer.data[j])])
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    cell = np.asarray(maps[0].scale)
    for r, c in np.argwhere(maps[0].data > 0):
        centre = np.asarray(maps[0].data_to_world(np.array([r, c], float)))
        assert np.all(centre >= lo - cell) and np.all(centre <= hi + cell)
    assert len(tiles.data) >= 5
    # Clicking the best supporting tile of the caption says what it supports.
    first = np.asarray(tiles.data[0]).mean(axis=0)
    click(qtbot, plugin_viewer, tiles, first)
    (picked,) = tiles.selected_data  # the caption's best tile, or a phrase's outline drawn over the same cell
    assert tiles.features["cell"].iloc[picked] == tiles.features["cell"].iloc[0]
    assert panel.grounding.tile.value == describe_tile(tiles, picked)
    assert panel.grounding.tile.value.startswith(f"tile {tiles.features['cell'].iloc[0]}: #")
    assert slide in plugin_viewer.layers

