"""While a slide is embedded in a worker, the UI thread keeps ticking (no gap > 250 ms)."""

from __future__ import annotations

import time

import pytest

from napari_histoclip._widgets._main import HistoclipWidget

pytestmark = pytest.mark.gui
MAX_GAP_S = 0.25


def worst_gap_while(qtbot, widget: HistoclipWidget, start) -> tuple[float, float]:
    """Run ``start()`` (which starts a task) with a 10 ms timer on the UI thread; return the
    longest interval between ticks and the task's duration, in seconds."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(50)
    t0 = time.perf_counter()
    start()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    t1 = time.perf_counter()
    qtbot.wait(50)
    timer.stop()
    during = [t for t in ticks if t0 - 0.05 <= t <= t1 + 0.05]
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    return max(gaps), t1 - t0


def test_ui_stays_responsive_while_embedding(make_napari_viewer, qtbot, cmu_layer_data, capsys) -> None:
    """The double computes like a model would: numpy work per tile, in the worker thread."""
    from fakes import FakeBackend
    from napari.layers import Layer

    backend = FakeBackend(tile=112, tile_delay=0.002)
    viewer = make_napari_viewer()
    widget = HistoclipWidget(viewer, backend=backend)
    viewer.window.add_dock_widget(widget)
    viewer.add_layer(Layer.create(*cmu_layer_data))
    gap, took = worst_gap_while(qtbot, widget, widget.embed_button.native.click)
    assert "embed_slide" in backend.calls and took > 0.5
    with capsys.disabled():
        print(f"\n[ui] worst UI-thread gap while embedding with the test double: {1000 * gap:.0f} ms over {took:.1f} s")
    assert gap < MAX_GAP_S


def test_ui_stays_responsive_while_the_local_backend_embeds(make_napari_viewer, qtbot, local_backend, slides_dir, cmu_layer_data, capsys) -> None:
    """The real thing: test-tiny encodes tiles in the worker thread.

    The first task of a session also imports torch and open_clip in the worker; ``dlopen`` of
    their libraries holds the GIL for up to ~0.2 s at a time, a one-off reported apart. The
    embedding itself (model loaded) is what must never stall the UI.
    """
    from napari.layers import Layer

    from napari_histoclip._reader import read_slide_layer

    viewer = make_napari_viewer()
    widget = HistoclipWidget(viewer, backend=local_backend)
    viewer.window.add_dock_widget(widget)
    viewer.add_layer(Layer.create(*cmu_layer_data))
    widget.model.value = "test-tiny"
    first_gap, first_took = worst_gap_while(qtbot, widget, widget.embed_button.native.click)

    viewer.add_layer(Layer.create(*read_slide_layer(slides_dir / "test3-DAPI-2-(387).ndpi")))
    assert widget.slide.value.name.startswith("test3")
    gap, took = worst_gap_while(qtbot, widget, widget.embed_button.native.click)
    with capsys.disabled():
        print(f"\n[ui] worst UI-thread gap, first task (imports torch, loads test-tiny, embeds CMU): "
              f"{1000 * first_gap:.0f} ms over {first_took:.1f} s")
        print(f"[ui] worst UI-thread gap while LocalBackend embeds the NDPI slide (test-tiny): "
              f"{1000 * gap:.0f} ms over {took:.1f} s")
    assert gap < MAX_GAP_S
    # The one-off import stall: ~0.2 s alone, up to ~0.5 s on a loaded 2-core machine.
    assert first_gap < 2.0
