"""New layers in event-loop turns (issue 21, napari item 10): inserted hidden, shown a turn
later; a result's layer models made in the task's worker; vispy's dash patterns warmed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_histoclip._viewer import HiddenLayer, add_layer_in_turns, hidden_layer


def test_a_layer_is_inserted_hidden_and_shown_a_turn_later() -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    steps = add_layer_in_turns(viewer, (np.ones((4, 6), np.float32), {"name": "x", "opacity": 0.5}, "image"))
    next(steps)  # the first turn: inserted, hidden
    (layer,) = viewer.layers
    assert layer.name == "x" and not layer.visible and layer.opacity == 0.5
    with pytest.raises(StopIteration) as end:  # the next turn: shown, and the layer returned
        next(steps)
    assert end.value.value is layer and layer.visible


def test_a_layer_asked_hidden_takes_one_turn_and_stays_hidden() -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    steps = add_layer_in_turns(viewer, (np.ones((4, 6), np.float32), {"name": "p", "visible": False}, "image"))
    with pytest.raises(StopIteration) as end:
        next(steps)
    assert end.value.value is viewer.layers["p"] and not viewer.layers["p"].visible


def test_a_class_map_made_in_a_worker_thread_is_the_layer_added() -> None:
    """A result's layer models are made in the worker (no Qt, no GL): the same look as one
    made on the UI thread, hidden until added and shown."""
    from napari.components import ViewerModel

    from napari_histoclip._layers import class_map_layers
    from napari_histoclip._slide import SlideInfo

    class Result:
        labels = ("tumor", "stroma")
        class_map = np.array([[0, 1], [2, 3]], np.int32)
        probabilities = np.full((2, 2, 2), 0.5, np.float32)

        class geometry:
            scale, translate = (224.0, 224.0), (111.5, 111.5)

    info = SlideInfo("/slides/a.svs", "a.svs", 448, 448, 0.5)
    data = class_map_layers(Result(), info, ["#ff0000", "#00ff00"])
    made: list[HiddenLayer] = []
    worker = threading.Thread(target=lambda: made.extend(hidden_layer(d) for d in data))
    worker.start()
    worker.join(timeout=60)
    assert [m.visible for m in made] == [True, False]  # the class map is shown, the probabilities not
    assert not made[0].layer.visible
    viewer = ViewerModel()
    layers = []
    for m in made:
        steps = add_layer_in_turns(viewer, m)
        try:
            while True:
                next(steps)
        except StopIteration as end:
            layers.append(end.value)
    assert layers == [m.layer for m in made] and list(viewer.layers) == layers
    class_map, prob = layers
    assert class_map.visible and not prob.visible
    on_ui = data[0][0], dict(data[0][1]), data[0][2]
    from napari.layers import Layer

    same = Layer.create(*on_ui)
    assert np.allclose(class_map.colormap.map(np.arange(5)), same.colormap.map(np.arange(5)))
    assert class_map.scale.tolist() == same.scale.tolist() and class_map.opacity == same.opacity
    assert list(class_map.features["class"]) == ["no tissue", "tumor", "stroma", "unknown"]


def test_the_warm_up_fills_vispys_dash_pattern_cache() -> None:
    """The first Labels layer's polygon overlay builds vispy's 13 dash patterns (40-60 ms of
    Python on the UI thread) unless the warm-up has: the cache is then full."""
    from vispy.visuals.line.dash_atlas import _make_pattern

    from napari_histoclip._warmup import warm_line_patterns

    _make_pattern.cache_clear()
    warm_line_patterns()
    assert _make_pattern.cache_info().currsize >= 13
    from vispy.visuals.line.dash_atlas import DashAtlas

    hits = _make_pattern.cache_info().hits
    DashAtlas()  # what a Labels layer's overlay makes: every pattern from the cache
    assert _make_pattern.cache_info().hits - hits >= 13


def _record_made(monkeypatch: pytest.MonkeyPatch, module: object) -> list[tuple[str, HiddenLayer]]:
    """Wrap ``module.hidden_layer`` to record (thread name, layer made) for each call."""
    made: list[tuple[str, HiddenLayer]] = []

    def recording(layer_data):  # noqa: ANN001, ANN202
        out = hidden_layer(layer_data)
        made.append((threading.current_thread().name, out))
        return out

    monkeypatch.setattr(module, "hidden_layer", recording)
    return made


def _assert_made_in_worker(made: list[tuple[str, HiddenLayer]], layers: list[object]) -> None:
    """The viewer's ``layers`` are the ones made, and none was made on the UI thread."""
    assert [m.layer for _, m in made] == layers
    assert all(name != threading.main_thread().name for name, _ in made), [name for name, _ in made]


@pytest.mark.gui
def test_a_zero_shot_run_adds_the_layers_its_worker_made(plugin_dock, plugin_viewer, fake_backend, cmu_slide, qtbot,
                                                        notes, monkeypatch) -> None:
    """Through the Plugins-menu path: the class map and probability layer on the viewer are the
    ones made in the task's worker thread, the map shown and active, the probabilities hidden."""
    import napari_histoclip._widgets._zeroshot as zeroshot
    from tests.support.dock_helpers import slide_dock

    made = _record_made(monkeypatch, zeroshot)
    dock = slide_dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide, "fake-clip")
    dock.zero_shot.run_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)
    assert not notes.errors, notes.errors
    class_map = plugin_viewer.layers["CMU-1-Small-Region: class map"]
    prob = plugin_viewer.layers["CMU-1-Small-Region: p(tumor epithelium)"]
    _assert_made_in_worker(made, [class_map, prob])
    assert class_map.visible and not prob.visible
    assert plugin_viewer.layers.selection.active is class_map


@pytest.mark.gui
def test_a_classifier_run_adds_its_layers_in_turns_as_zero_shot_does(plugin_dock, plugin_viewer, fake_backend, cmu_slide,
                                                                     qtbot, notes, monkeypatch, tmp_path) -> None:
    """The Zero-shot tab's classifier source (the one apply-classifier path): the layers are
    made in the worker, then inserted and shown in turns of the event loop, and the class map
    records its bundle once shown."""
    import json

    import napari_histoclip._viewer as viewer_module
    from napari_histoclip._layer_meta import layer_record
    from napari_histoclip._widgets._zeroshot import CLASSIFIER
    from tests.support.dock_helpers import slide_dock
    from tests.support.fakes import CLASSIFIER_FILE

    bundle = tmp_path / "clf"
    bundle.mkdir()
    (bundle / CLASSIFIER_FILE).write_text(json.dumps({"name": "clf", "labels": ["tumor", "stroma"], "model": "fake-clip"}))
    turns: list[str] = []
    real_turns = viewer_module.add_layer_in_turns

    def counting(viewer, hidden):  # noqa: ANN001, ANN202
        turns.append(hidden.layer.name)
        return (yield from real_turns(viewer, hidden))

    dock = slide_dock(plugin_dock, plugin_viewer, fake_backend, cmu_slide, "fake-clip")  # the slide's own layer first
    made = _record_made(monkeypatch, viewer_module)
    monkeypatch.setattr("napari_histoclip._widgets._zeroshot.add_layer_in_turns", counting)
    dock.zero_shot.source.value = CLASSIFIER
    dock.zero_shot.classifier.value = str(bundle)
    dock.zero_shot.run_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=60_000)
    assert not notes.errors, notes.errors
    class_map = plugin_viewer.layers["CMU-1-Small-Region: class map"]
    prob = plugin_viewer.layers["CMU-1-Small-Region: p(tumor)"]
    _assert_made_in_worker(made, [class_map, prob])
    assert turns == [class_map.name, prob.name]  # each added in turns of its own
    assert class_map.visible and not prob.visible and plugin_viewer.layers.selection.active is class_map
    assert layer_record(class_map).classifier == str(bundle)
