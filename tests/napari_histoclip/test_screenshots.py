"""PNG screenshots of the dock in use on CMU-1-Small-Region, for the README and for looking at.

Taken as a user gets there: the dock from Plugins > HistoCLIP (``add_plugin_dock_widget``, so it
holds napari's proxy of the viewer), the slide opened with the plugin's reader, shapes drawn
with real mouse events. No error notification may appear on the way.

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

from tests.support.dock_helpers import open_slide
from tests.support.mouse import draw_polygon, draw_rectangle

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WINDOW = (1440, 1080)  # the dock's header and tabs need ~970 px; the rest lets its lists show whole
DOCK_WIDTH = 430
MAX_BYTES = 460_000  # a 1440 x 1080 window: the zoomed tissue of region-zero-shot.png is ~410 KB
#: The classifier bundle of the "Labels from: a trained classifier" shot: its classes and colours.
CLASSIFIER_CLASSES = ("tumor", "stroma", "fat")
CLASSIFIER_COLORS = ((214, 39, 40), (44, 160, 44), (255, 215, 0))


@pytest.fixture
def shot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("HISTOCLIP_SCREENSHOT_DIR") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_png(viewer, path: Path, dock=None) -> Path:
    """A full-window screenshot, palette-quantised so that it stays a few hundred KB; with
    ``dock``, first checks that none of its text is cut off (:func:`cut_text`)."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    # napari slices asynchronously: give it time to load the level the zoom asks for.
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    if dock is not None:
        assert cut_text(dock) == [], f"{path.name}: {cut_text(dock)}"
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(pixels)[..., :3])
    # Octree keeps rare saturated colours (labels, outlines) that median cut folds into grey.
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


@pytest.fixture(scope="module")
def classifier_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A classifier bundle as Refine saves one (a random head on test-tiny, default tiles): it
    runs from the embeddings the zero-shot shot cached, so the shot costs no new embedding."""
    from tests.support.dock_helpers import tiny_classifier

    return tiny_classifier(tmp_path_factory.mktemp("shot-classifier") / "tumor-stroma-fat", CLASSIFIER_CLASSES,
                           CLASSIFIER_COLORS, own_backbone=False)


@pytest.fixture
def errors(notes):
    """Error notifications of any source: the dock's ``show_error`` (captured by ``notes``, so
    no toast covers the canvas) and napari's own (an exception in an event handler)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen: list[str] = []

    def on_note(note) -> None:
        if note.severity >= NotificationSeverity.ERROR:
            seen.append(str(note.message))

    notification_manager.notification_ready.connect(on_note)
    yield lambda: notes.errors + seen
    notification_manager.notification_ready.disconnect(on_note)


@pytest.fixture
def shown(plugin_dock, plugin_viewer, cmu_slide, tiny_captioner, errors):
    """The plugin dock on a sized window with CMU-1-Small-Region open and the toy captioner."""
    viewer = plugin_viewer
    viewer.window._qt_window.resize(*WINDOW)
    plugin_dock.setMaximumWidth(DOCK_WIDTH)  # napari splits a shown window ~60/40: keep the canvas wide
    open_slide(viewer, cmu_slide)
    scale_bar = viewer.canvas.overlays.scale_bar
    scale_bar.visible, scale_bar.position = True, "bottom_left"  # bottom right sits under the dock edge
    plugin_dock.captions.captioner.value = tiny_captioner
    viewer.reset_view()
    return plugin_dock, viewer


def _wait(qtbot, dock) -> None:
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=120_000)


def cut_text(dock) -> list[str]:
    """The dock's visible labels narrower than their text (a non-wrapping QLabel clips it), and
    its visible tables that need scrolling to show their rows (the class prompts typed): what
    a screenshot would show cut off. Lists (hits, n-best, unsure tiles) scroll by design."""
    from qtpy.QtWidgets import QLabel, QTableWidget

    out = []
    for label in dock.findChildren(QLabel):
        if label.isVisibleTo(dock) and label.text() and label.width() < label.minimumSizeHint().width():
            out.append(f"label {label.text()[:60]!r}: {label.width()} px < {label.minimumSizeHint().width()} px")
    for table in dock.findChildren(QTableWidget):
        if table.isVisibleTo(dock) and table.verticalScrollBar().maximum() > 0:
            out.append(f"table of {table.rowCount()} rows scrolls ({table.height()} px high)")
    return out


def _check(shots: list[Path]) -> None:
    from PIL import Image

    for path in shots:
        assert 0 < path.stat().st_size < MAX_BYTES, path
        arr = np.asarray(Image.open(path).convert("RGB"))
        assert arr.std() > 20  # not a blank or black frame


def _frame_shape(viewer, shapes, index: int, margin: float = 0.15) -> None:
    """Centre and zoom the camera on one shape, as a user zooms in to read a small map."""
    from napari_histoclip._viewer import camera_of, canvas_size

    world = np.asarray([shapes.data_to_world(v) for v in shapes.data[index]])[:, -2:]
    (r0, c0), (r1, c1) = world.min(axis=0), world.max(axis=0)
    ch, cw = canvas_size(viewer)
    camera = camera_of(viewer)
    camera.center = ((r0 + r1) / 2, (c0 + c1) / 2)
    camera.zoom = float(min(ch / ((r1 - r0) * (1 + 2 * margin)), cw / ((c1 - c0) * (1 + 2 * margin))))


def _draw_regions(qtbot, dock, viewer):
    """A regions layer from the Caption tab with a rectangle and a polygon drawn by mouse."""
    dock.tabs.setCurrentIndex(1)
    dock.captions.new_layer_button.native.click()
    shapes = viewer.layers[-1]
    draw_rectangle(qtbot, viewer, shapes, (350, 450), (850, 1050))
    draw_polygon(qtbot, viewer, shapes, [(1650, 550), (1750, 1300), (2300, 950), (2100, 450)])
    return shapes


def test_screenshots_of_each_tab_in_use(classifier_bundle, shown, qtbot, shot_dir, errors, capsys) -> None:
    """Whole-slide zero-shot, captions, and the class map of a trained classifier (the real
    backend with test-tiny, the toy captioner, a classifier bundle)."""
    from napari_histoclip._widgets._zeroshot import CLASSIFIER

    dock, viewer = shown

    # 1. Zero-shot: class map over the slide, legend in the dock.
    dock.tabs.setCurrentIndex(0)
    dock.zero_shot.run_button.native.click()
    _wait(qtbot, dock)
    assert errors() == []
    viewer.reset_view()
    shots = [save_png(viewer, shot_dir / "zero-shot-class-map.png", dock)]

    # 2. Captions on shapes drawn with the mouse, the n-best list of the selected one.
    viewer.layers["CMU-1-Small-Region: class map"].visible = False
    shapes = _draw_regions(qtbot, dock, viewer)
    dock.captions.caption_button.native.click()  # the uncaptioned shapes: both
    _wait(qtbot, dock)
    assert all(shapes.features["caption"])
    shapes.selected_data = {1}
    dock.captions.choose(1)  # a user picks the second of the n-best captions for shape 1
    shots.append(save_png(viewer, shot_dir / "captions-on-shapes.png", dock))

    # 3. The Zero-shot tab's other label source: a trained classifier bundle labels the slide.
    shapes.visible = False
    dock.tabs.setCurrentIndex(0)
    zero_shot = dock.zero_shot
    zero_shot.source.value = CLASSIFIER
    zero_shot.classifier.value = classifier_bundle
    zero_shot.run_button.native.click()
    _wait(qtbot, dock)
    assert errors() == []
    class_map = viewer.layers["CMU-1-Small-Region: class map"]
    assert tuple(class_map.metadata["labels"]) == CLASSIFIER_CLASSES
    class_map.visible = True  # hidden for the captions shot; the replaced map keeps that
    viewer.layers.selection.active = class_map
    viewer.reset_view()
    shots.append(save_png(viewer, shot_dir / "zero-shot-classifier.png", dock))

    assert errors() == []
    _check(shots)
    with capsys.disabled():
        print(f"\n[screenshots] {', '.join(p.name for p in shots)} in {shot_dir}", file=sys.stderr)


def test_screenshots_of_region_zero_shot_and_region_search(
    shown, qtbot, shot_dir, tmp_path, slides_dir, errors, capsys
) -> None:
    """Zero-shot inside a drawn polygon, and a cohort searched by a drawn rectangle."""
    from napari_histoclip._widgets._zeroshot import SELECTED_SHAPE

    dock, viewer = shown
    shapes = _draw_regions(qtbot, dock, viewer)

    # 3. Region zero-shot: the class map inside the selected polygon only.
    dock.tabs.setCurrentIndex(0)
    viewer.layers.selection.active = shapes
    shapes.selected_data = {1}
    dock.zero_shot.scope.value = SELECTED_SHAPE
    dock.zero_shot.run_button.native.click()
    _wait(qtbot, dock)
    assert errors() == []
    region_map = [ly for ly in viewer.layers if ly.metadata.get("kind") == "class_map"]
    assert len(region_map) == 1 and region_map[0].visible and region_map[0].data.any()
    viewer.layers.selection.active = shapes
    shapes.mode = "select"
    _frame_shape(viewer, shapes, 1)  # 4 tiles at the slide's full view are too small to read
    shots = [save_png(viewer, shot_dir / "region-zero-shot.png", dock)]

    # 4. Find similar: index a two-slide cohort, query by the rectangle, open the best hit.
    for layer in viewer.layers:
        if layer.metadata.get("kind") in ("class_map", "probability"):
            layer.visible = False
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi"):
        os.symlink(slides_dir / name, cohort / name)
    dock.tabs.setCurrentIndex(2)
    search = dock.search
    search.folder.value = cohort
    search.build_button.native.click()
    _wait(qtbot, dock)
    search.exclude.value = False
    viewer.layers.selection.active = shapes
    shapes.selected_data = {0}
    search.shape_button.native.click()
    _wait(qtbot, dock)
    assert errors() == []
    assert search.results.count() > 1
    search.results.itemClicked.emit(search.results.item(1))  # #1 is the query region itself
    shots.append(save_png(viewer, shot_dir / "find-similar.png", dock))

    assert errors() == []
    _check(shots)
    with capsys.disabled():
        print(f"\n[screenshots] {', '.join(p.name for p in shots)} in {shot_dir}", file=sys.stderr)
