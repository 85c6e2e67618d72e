"""While a slide is embedded or relabelled, the UI thread keeps ticking (no gap > 250 ms while
embedding; relabelling updates its layers in place).

The two embedding cases build the widget class on a hidden viewer, not through the plugin path:
they bound the dock's own UI-thread gaps at 250 ms of wall time, and a shown canvas adds
llvmpipe repaints that a loaded 2-core machine stretches past that (384 and 274 ms seen through
the plugin path at load ~7, 2026-12-01). The relabel case goes through the plugin path."""

from __future__ import annotations

import time

import pytest

from napari_histoclip._widgets._main import HistoclipWidget

pytestmark = pytest.mark.gui
MAX_GAP_S = 0.25
MAX_RELABEL_GAP_S = 3.0
MAX_UPDATE_CPU_S = 0.5  # UI-thread CPU seconds to update a relabel's layers (rebuilt: 1-2.3 s)


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


def busy_python(seconds: float) -> None:
    """Work that holds the GIL (a Python loop, as a model's Python glue does), unlike a sleep:
    a task run on the UI thread, or a worker that never yields the GIL, stalls the timer."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_ui_stays_responsive_while_embedding(make_napari_viewer, qtbot, cmu_layer_data, capsys) -> None:
    """The double computes in Python per tile (holding the GIL), in the worker thread."""
    from napari.layers import Layer

    from tests.support.fakes import FakeBackend

    class GilHolding(FakeBackend):
        def embed_slide(self, slide, model, tiles=None, *, progress=None, cancel=None):  # noqa: ANN001
            def work(p):  # noqa: ANN001
                busy_python(0.004)
                if progress is not None:
                    progress(p)

            from backend.api import TileOptions

            return super().embed_slide(slide, model, tiles or TileOptions(), progress=work, cancel=cancel)

    backend = GilHolding(tile=112)
    viewer = make_napari_viewer()
    widget = HistoclipWidget(viewer, backend=backend)
    viewer.window.add_dock_widget(widget)
    viewer.add_layer(Layer.create(*cmu_layer_data))
    gap, took = worst_gap_while(qtbot, widget, widget.embed_button.native.click)
    assert "embed_slide" in backend.calls and took > 0.5
    with capsys.disabled():
        print(f"\n[ui] worst UI-thread gap while embedding with the GIL-holding double: {1000 * gap:.0f} ms over {took:.1f} s")
    assert gap < MAX_GAP_S


@pytest.mark.slow
def test_relabelling_from_the_plugin_dock_does_not_freeze_the_ui(plugin_dock, plugin_viewer, qtbot, cmu_slide, notes, capsys) -> None:
    """New prompts on an embedded slide: the result layers are updated, not rebuilt."""
    from napari_histoclip._widgets._prompts import PromptRow
    from tests.support.dock_helpers import open_slide

    dock = plugin_dock
    open_slide(plugin_viewer, cmu_slide)
    panel = dock.zero_shot
    classes = ["tumor", "stroma", "lymphocytes", "fat", "necrosis", "mucin", "vessels", "nerve"]
    colors = [f"#{(40 * i) % 256:02x}8040" for i in range(len(classes))]
    panel.prompts.set_rows([PromptRow(c, colors[i]) for i, c in enumerate(classes)])
    panel.run_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=300_000)  # embeds the slide
    assert not notes.errors, notes.errors
    class_map = plugin_viewer.layers["CMU-1-Small-Region: class map"]
    # The user rewords the prompts (colours stay with their rows, as in the table).
    panel.prompts.set_rows([PromptRow(c.upper() if i < 6 else c + " tissue", colors[i]) for i, c in enumerate(classes)])
    shown: list[tuple[float, float]] = []
    show = panel.show_result_steps
    changes: list[str] = []
    for ev in (plugin_viewer.layers.events.inserted, plugin_viewer.layers.events.removed):
        ev.connect(lambda e: changes.append(f"{e.type} {e.value.name}"))

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003
        # The UI thread's own CPU time, not wall time: on a 2-core machine shared by several
        # test runs (load 10 and more) the same in-place update took 250-870 ms of wall time,
        # which failed a 250 ms wall-clock bound 3 runs in 4 (the cause of the old xfail).
        t, c = time.perf_counter(), time.thread_time()
        steps = list(show(*args, **kwargs))  # a relabel updates in place: all in one step
        shown.append((time.perf_counter() - t, time.thread_time() - c))
        return iter(steps)

    panel.show_result_steps = timed
    gap, took = worst_gap_while(qtbot, dock, panel.run_button.native.click)
    with capsys.disabled():
        print(f"\n[ui] worst UI-thread gap while relabelling (8 classes): {1000 * gap:.0f} ms over {took:.1f} s; "
              f"layers updated in {1000 * shown[0][0]:.0f} ms ({1000 * shown[0][1]:.0f} ms UI-thread CPU)")
    assert not notes.errors, notes.errors
    assert plugin_viewer.layers["CMU-1-Small-Region: class map"] is class_map  # updated in place
    (prob,) = [lyr for lyr in plugin_viewer.layers if lyr.metadata.get("kind") == "probability"]
    assert "nerve tissue" in prob.metadata["labels"] and "nerve" not in prob.metadata["labels"]
    # Updated, not rebuilt: no layer was added or removed (the probability layer renamed in place).
    assert not changes, changes
    # Rebuilding the layers cost the UI thread 1-2.3 s; updating them a fraction of that.
    assert shown[0][1] < MAX_UPDATE_CPU_S
    # The whole relabel, repaints included (Mesa llvmpipe, 2 cores shared by several runs:
    # ~1 s seen here under a load of 10-17, 14 s when the layers were rebuilt).
    assert gap < MAX_RELABEL_GAP_S


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
