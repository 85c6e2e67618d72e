"""PNG screenshots of the dock in use on CMU-1-Small-Region, for the README and for looking at.

Written to a temp folder, or to ``$HISTOCLIP_SCREENSHOT_DIR`` (``docs/screenshots`` to refresh
the committed ones). Full-window shots of a shown window: hidden, a canvas-only shot can come
back black and a multiscale layer keeps the level it had before the camera moved.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_histoclip._widgets._main import HistoclipWidget

pytestmark = pytest.mark.gui
WINDOW = (1440, 920)
DOCK_WIDTH = 430
MAX_BYTES = 400_000


@pytest.fixture
def shot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("HISTOCLIP_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_png(viewer, path: Path) -> Path:
    """A full-window screenshot, palette-quantised so that it stays a few hundred KB."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    # napari slices asynchronously: give it time to load the level the zoom asks for.
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(pixels)[..., :3])
    # Octree keeps rare saturated colours (labels, outlines) that median cut folds into grey.
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def test_screenshots_of_each_tab_in_use(
    make_napari_viewer, qtbot, cmu_layer_data, local_backend, tiny_captioner, shot_dir, tmp_path, slides_dir, capsys,
    notes,  # captured: no notification toasts over the canvas
) -> None:
    """The real backend with test-tiny, and the toy captioner (readable sentences)."""
    from napari.layers import Layer

    backend, captioner = local_backend, tiny_captioner
    # Shown (under Xvfb): a hidden canvas never redraws, so napari keeps the zoomed-out level.
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*WINDOW)
    widget = HistoclipWidget(viewer, backend=backend)
    widget.setMaximumWidth(DOCK_WIDTH)  # napari splits a shown window ~60/40: keep the canvas wide
    viewer.window.add_dock_widget(widget, name="HistoCLIP", area="right")
    viewer.add_layer(Layer.create(*cmu_layer_data))
    scale_bar = viewer.canvas.overlays.scale_bar
    scale_bar.visible, scale_bar.position = True, "bottom_left"  # bottom right sits under the dock edge
    widget.model.value = "test-tiny"

    def wait() -> None:
        qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)

    # 1. Zero-shot: class map over the slide, legend in the dock.
    widget.tabs.setCurrentIndex(0)
    widget.zero_shot.run_button.native.click()
    wait()
    viewer.reset_view()
    shots = [save_png(viewer, shot_dir / "zero-shot-class-map.png")]

    # 2. Captions on shapes, the n-best list of the selected one.
    viewer.layers["CMU-1-Small-Region: class map"].visible = False
    widget.tabs.setCurrentIndex(1)
    shapes = widget.captions.new_layer()
    shapes.add_rectangles(np.array([[350, 450], [850, 1050]]))
    shapes.add_polygons([np.array([[1650, 550], [1750, 1300], [2300, 950], [2100, 450]])])
    widget.captions.captioner.value = captioner
    widget.captions.caption_button.native.click()
    wait()
    shapes.selected_data = {1}
    widget.captions.choose(1)  # a user picks the second of the n-best captions for shape 1
    shots.append(save_png(viewer, shot_dir / "captions-on-shapes.png"))

    # 3. Find similar: index a two-slide cohort, query by the first shape, open the best hit.
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi"):
        os.symlink(slides_dir / name, cohort / name)
    widget.tabs.setCurrentIndex(2)
    search = widget.search
    search.folder.value = cohort
    search.build_button.native.click()
    wait()
    search.exclude.value = False
    viewer.layers.selection.active = shapes
    shapes.selected_data = {0}
    search.shape_button.native.click()
    wait()
    assert search.results.count() > 1
    search.results.itemClicked.emit(search.results.item(1))  # #1 is the query region itself
    shots.append(save_png(viewer, shot_dir / "find-similar.png"))

    for path in shots:
        assert 0 < path.stat().st_size < MAX_BYTES, path
        from PIL import Image

        arr = np.asarray(Image.open(path).convert("RGB"))
        assert arr.std() > 20  # not a blank or black frame
    with capsys.disabled():
        print(f"\n[screenshots] {', '.join(p.name for p in shots)} in {shot_dir}", file=sys.stderr)
