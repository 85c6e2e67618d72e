"""Helpers of the plugin tests (plain functions, not fixtures).

Imported as ``from tests.support.dock_helpers import ...``, never ``from conftest import ...``:
several test folders have a ``conftest.py``, and which one the bare name ``conftest`` means at
run time depends on collection order.
"""

from __future__ import annotations


def open_slide(viewer, path, timeout: float = 60.0) -> object:
    """Open a slide with the plugin's reader (File > Open's path); returns its image layer.

    With the HistoCLIP dock open and idle, the reader hands the slide to the dock's task
    runner and returns no layer: then this waits (running Qt's event loop) for the layer."""
    import time
    from pathlib import Path

    from qtpy.QtWidgets import QApplication

    from napari_histoclip._slide import find_slide_layer

    layers = viewer.open(str(path), plugin="napari-histoclip")
    if layers:
        return layers[0]
    end = time.monotonic() + timeout
    while (layer := find_slide_layer(viewer.layers, str(path))) is None:
        assert time.monotonic() < end, f"the reader opened nothing from {path} in {timeout:.0f} s"
        QApplication.processEvents()
        time.sleep(0.01)
    # the dock's runner is busy until the layer is shown: wait for it to be free
    while any(getattr(getattr(w, "runner", None), "busy", False) for w in viewer.window.dock_widgets.values()):
        assert time.monotonic() < end, f"the dock was still busy {timeout:.0f} s after opening {Path(path).name}"
        QApplication.processEvents()
        time.sleep(0.01)
    return layer


def with_backend(dock, backend) -> object:
    """The plugin-path dock using ``backend`` (a test double, or a module's shared
    ``LocalBackend`` whose loaded model later tests reuse) in place of the one it would make;
    injected, so the dock keeps it open when it closes, as it keeps a remote backend."""
    dock.use_backend(backend)  # the one it made for its model list is closed
    dock.refresh_models()
    return dock


def slide_dock(plugin_dock, plugin_viewer, backend, path, model: str | None = None) -> object:
    """The plugin-path dock on ``backend`` with the slide ``path`` opened by the plugin's reader."""
    dock = with_backend(plugin_dock, backend)
    open_slide(plugin_viewer, path)
    if model is not None:
        dock.model.value = model
    return dock


def tiny_classifier(path, names: tuple[str, ...], colors: tuple[tuple[int, int, int], ...], *,
                    own_backbone: bool = True) -> str:
    """A classifier bundle at ``path``: a random linear head over ``names`` (``colors`` as RGB)
    on ``test-tiny``'s image tower. ``own_backbone``: written as a CLIP-IT student is, the tower
    saved in the bundle as its image-only backbone (64 px tiles at 2 µm/px: embedded anew);
    else as a saved Refine head is, on the registry's ``test-tiny`` with the default tiles
    (224 px at 0.5 µm/px), so it runs from that model's cached slide embeddings. Returns the
    bundle folder."""
    import numpy as np

    from backend.models import load_model
    from backend.models.classifier import Classifier, save_classifier
    from backend.models.heads import LinearHead

    tiny = load_model("test-tiny", device="cpu")
    rng = np.random.default_rng(0)
    head = LinearHead(names, colors, 20 * rng.normal(size=(len(names), tiny.embed_dim)), rng.normal(size=len(names)))
    tiles = {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5} if own_backbone else {"tile_size": 224, "mpp": 0.5,
                                                                                    "min_tissue": 0.5}
    clf = Classifier("student", head, "test-tiny", str(tiny.model_id), tiles)
    return str(save_classifier(clf, path, backbone=tiny if own_backbone else None))
