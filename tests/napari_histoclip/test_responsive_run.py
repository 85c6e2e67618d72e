"""A whole zero-shot run through the Plugins-menu path, measured with a real event loop
(issue 21, napari item 10): open a slide (File > Open's reader path, the dock idle), label it
with test-tiny, its result layers added. A QTimer ticks every 10 ms on the UI thread; the
longest interval between ticks is the longest the UI froze, and the UI thread's CPU time
between the same ticks is its own work in that gap (the rest is waiting for a core, or the X
server and llvmpipe drawing). Each gap is put down to the step it falls in (the turn a layer is
inserted in is "adding" it, the turn it is made visible in "showing" it), and printed.

The goal is no gap over 0.2 s. What stands in its way is napari's work on the UI thread for a
new layer, which no plugin API splits: at the insertion its vispy visual (an image layer builds
a 2-D and a 3-D visual, each loading vispy's interpolation kernels from disk; a Labels layer
also a polygon and a brush overlay), its layer controls, its layer-list row and the switch of
the controls panel to it; once visible, its slice, texture upload and first paint. The plugin
gives each of these a turn of its own (``_viewer.add_layer_in_turns``), makes the result's
layer models in the worker, and warms vispy's dash patterns off the UI thread (``_warmup``).

Measured on these 2-core machines (2026-12-07), the longest gap of each kind:

- before (one turn per layer), load ~2: inserting the slide 126-259 ms, the class map 155-249
  ms, the probability layer 144-213 ms; at load ~3: 423, 378 and 204 ms.
- now, load 1-2: inserting the slide 111-181 ms wall (94-131 ms of UI-thread CPU), the class map
  95-129 ms (83-102 ms), the probability layer 143-149 ms (96-98 ms); showing a layer 57-68 ms;
  the plugin's own steps 34-71 ms. Every gap of the run is under the 0.2 s goal.
- now, load 5-9 (other engineers' test runs): inserting the slide 140-520 ms wall (86-142 ms
  CPU), the class map 100-413 ms (79-111 ms), the probability layer 152-376 ms (96-109 ms);
  showing a layer 67-288 ms (34-43 ms); the plugin's own steps 55-190 ms. The UI thread's own
  work stays as idle; the rest is the wait for a core.
- not in these budgets: a full garbage collection. CPython 3.11 collects its oldest generation
  in one go, holding the GIL, in whichever thread allocates: 0.4-0.96 s here for the ~700,000
  objects of a process holding napari and torch (load 5-9). Several fall while torch is imported
  and a model loaded; none fell in this run, which loads the model beforehand.

What is asserted: the UI thread's own CPU time in every gap stays under the 0.2 s goal
(``MAX_TURN_CPU_S``): that is the part of a freeze the code decides, and it does not grow with
the machine's load (0.13 s idle, 0.14 s at load 5-9). The wall-clock gaps also include the wait
for a core, which on a CI machine running two test workers is not the code's to decide; they get
budgets with margin for that: the plugin's own steps (reading the slide, the model's work, the
status updates between them) ``MAX_GAP_S``, a turn adding or showing a layer ``MAX_LAYER_GAP_S``.
"""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from tests.support.dock_helpers import with_backend

pytestmark = [pytest.mark.gui, pytest.mark.slow]
MODEL = "test-tiny"
# The plugin's own steps: 0.10-0.29 s at load 12-20 (2026-12-01), 0.05-0.19 s at load 5-9, 0.07 s at 1-2.
MAX_GAP_S = 0.35
# A turn adding or showing a layer: up to 0.52 s at load 5-9, 0.18 s at 1-2 (the budget was 2.0 s
# when a layer took one turn: 0.8-1.4 s at load 12).
MAX_LAYER_GAP_S = 1.0
# The UI thread's own work in one gap, the part of a gap the code decides (the rest is the wait
# for a core): up to 0.14 s at load 5-9 and 0.13 s at load 1-2. This is the 0.2 s goal itself.
MAX_TURN_CPU_S = 0.2


class Ticks:
    """A 10 ms QTimer on the UI thread, the UI thread's CPU time at each tick, and the moments
    layers were added (inserted) and shown (made visible)."""

    def __init__(self, viewer) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.cpu: list[float] = []
        self.marks: list[tuple[float, str]] = []
        self.added: list[tuple[float, str]] = []
        self.shown: list[tuple[float, str]] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        viewer.layers.events.inserted.connect(self._inserted)

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())
        self.cpu.append(time.thread_time())  # this (UI) thread's own CPU time

    def _inserted(self, event) -> None:
        layer = event.value
        self.added.append((time.perf_counter(), layer.name))
        layer.events.visible.connect(
            lambda _e, lyr=layer: lyr.visible and self.shown.append((time.perf_counter(), lyr.name)))

    def mark(self, step: str) -> None:
        self.marks.append((time.perf_counter(), step))

    def steps(self) -> dict[str, tuple[float, float]]:
        """The longest gap of each step, wall and the UI thread's CPU seconds: a gap during which
        a layer was inserted is "adding" it, one in which a layer was made visible "showing" it;
        any other is the step it started in."""
        out: dict[str, tuple[float, float]] = {}
        for (a, b), (ca, cb) in zip(pairwise(self.ticks), pairwise(self.cpu), strict=True):
            if a < self.marks[0][0] or a > self.marks[-1][0]:
                continue
            layer = next((f"adding layer '{name}'" for t, name in self.added if a <= t <= b), None)
            layer = layer or next((f"showing layer '{name}'" for t, name in self.shown if a <= t <= b), None)
            step = layer or next(s for t, s in reversed(self.marks) if t <= a)
            wall, cpu = out.get(step, (0.0, 0.0))
            out[step] = (max(wall, b - a), max(cpu, cb - ca))
        return out


def test_a_whole_zero_shot_run_keeps_the_ui_responsive(plugin_viewer, plugin_dock, local_backend, cmu_slide, qtbot,
                                                        notes, capsys) -> None:
    import numpy as np

    from backend.api import SlideRef

    # The model loaded and torch imported beforehand (their first import in a process holds
    # the GIL in dlopen for up to 0.5 s: a once-per-session stall, see test_responsive).
    from napari_histoclip._compat import keep_triton_out
    from napari_histoclip._slide import find_slide_layer

    keep_triton_out()  # the canvas has mapped Mesa's LLVM: torch must not load triton now
    local_backend.embed_slide(SlideRef(str(cmu_slide)), MODEL, progress=None)
    local_backend.close()  # ... and no embeddings or model kept: the run embeds and loads anew
    dock = with_backend(plugin_dock, local_backend)
    dock.model.value = MODEL
    ticks = Ticks(plugin_viewer)
    ticks.timer.start()
    qtbot.wait(100)

    ticks.mark("open: reading in the dock's task runner")
    layers = plugin_viewer.open(str(cmu_slide), plugin="napari-histoclip")
    assert layers == [], "with the dock idle, File > Open hands the slide to the dock's task runner"
    qtbot.waitUntil(lambda: find_slide_layer(plugin_viewer.layers, str(cmu_slide)) is not None, timeout=60_000)
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)
    ticks.mark("idle after opening")
    qtbot.wait(300)

    ticks.mark("zero-shot: loading test-tiny, embedding, labelling in the worker")
    dock.zero_shot.run_button.native.click()
    qtbot.waitUntil(lambda: notes.errors or any(n.endswith("class map") for _, n in ticks.added),
                    timeout=300_000)
    assert not notes.errors, notes.errors
    ticks.mark("zero-shot: result shown in steps")
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)
    ticks.mark("idle after the run")
    qtbot.wait(300)
    ticks.mark("end")
    ticks.timer.stop()

    assert not notes.errors, notes.errors
    names = [name for _, name in ticks.added]
    assert names == ["CMU-1-Small-Region.svs", "CMU-1-Small-Region: class map",
                     "CMU-1-Small-Region: p(tumor epithelium)"], names
    added = [t for t, _ in ticks.added]
    assert all(any(a < t < b for t in ticks.ticks) for a, b in pairwise(added[1:])), "one layer per turn"
    for t_shown, name in ticks.shown:  # inserted hidden, shown in a later turn
        t_added = next(t for t, n in ticks.added if n == name)
        assert any(t_added < t < t_shown for t in ticks.ticks), f"{name}: inserted and shown in one turn"
    assert [name for _, name in ticks.shown] == names[:2], ticks.shown
    prob = plugin_viewer.layers["CMU-1-Small-Region: p(tumor epithelium)"]
    assert prob.metadata["probabilities"].shape[0] == 4 and not prob.visible
    assert np.asarray(plugin_viewer.layers["CMU-1-Small-Region: class map"].data).any()

    steps = ticks.steps()
    with capsys.disabled():
        print("\n[ui] longest UI gap of each step of a whole zero-shot run (test-tiny, CMU), "
              "wall and the UI thread's own CPU:")
        for step, (gap, cpu) in steps.items():
            print(f"[ui]   {1000 * gap:5.0f} ms  {1000 * cpu:4.0f} ms CPU  {step}")
    napari_own = {s: g for s, (g, _) in steps.items() if s.startswith(("adding layer", "showing layer"))}
    ours = {s: g for s, (g, _) in steps.items() if s not in napari_own}
    assert max(ours.values()) < MAX_GAP_S, ours
    # the slide and the class map inserted, then shown; the probability layer inserted hidden
    assert len(napari_own) == 5 and max(napari_own.values()) < MAX_LAYER_GAP_S, napari_own
    cpu = {s: c for s, (_, c) in steps.items()}
    assert max(cpu.values()) < MAX_TURN_CPU_S, cpu
