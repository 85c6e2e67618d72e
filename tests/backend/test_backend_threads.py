"""One LocalBackend used from many threads, as napari's worker pool uses it.

Qt's pool retires a thread idle for 30 s; the next call then comes from a new thread. Here a
thread that exits stands for that; the dock's close (on the UI thread) for ``close()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend import api
from backend.local import LocalBackend

TILES = api.TileOptions(tile_size=64, mpp=2.0)
MODEL = "test-tiny"


def on_thread(call: Callable[[], Any]) -> Any:
    """``call()`` on a new thread that then exits; its result, or its exception re-raised."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed back to the test's thread
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the call hung"
    if "error" in out:
        raise out["error"]
    return out["value"]



@pytest.fixture(scope="module")
def index(cmu_tiny_index: str) -> str:
    return cmu_tiny_index


def test_a_search_works_after_its_thread_exits_and_close_works_from_another(index: str, tmp_path: Path) -> None:
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu")
    request = api.SearchRequest(index, MODEL, text="tumor", k=3)
    first = on_thread(lambda: backend.search(request))  # opens the index on a thread that then ends
    again = on_thread(lambda: backend.search(request))  # a new pool thread, after the first retired
    assert again == first and len(first.hits) >= 1
    on_thread(backend.close)  # the dock closes on the UI thread
    # Closed handles are not reused: the next search opens the index again.
    assert on_thread(lambda: backend.search(request)) == first
    backend.close()


def _work(cmu_slide: Path, index: str) -> dict[str, Callable[[LocalBackend], Any]]:
    slide = api.SlideRef(str(cmu_slide))
    box = api.Region.box(600, 600, 600, 600)
    return {
        "embed": lambda b: b.embed_slide(slide, MODEL, TILES).n_tiles,
        "zero-shot": lambda b: b.zero_shot(api.ZeroShotRequest(slide, MODEL, ("tumor", "stroma"), tiles=TILES)),
        "region zero-shot": lambda b: b.zero_shot(
            api.ZeroShotRequest(slide, MODEL, ("tumor", "fat"), region=box, tiles=TILES)),
        "heatmap": lambda b: b.heatmap(api.HeatmapRequest(slide, MODEL, "nuclei", tiles=TILES)).similarity,
        "text search": lambda b: b.search(api.SearchRequest(index, MODEL, text="stroma", k=4)),
        "region search": lambda b: b.search(api.SearchRequest(
            index, MODEL, slide=slide, region=box, k=4, exclude_query_slide=False, tiles=TILES)),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, api.ZeroShotResult):
        return a.labels == b.labels and np.array_equal(a.class_map, b.class_map) and np.allclose(
            a.probabilities, b.probabilities, equal_nan=True, atol=1e-6)
    if isinstance(a, np.ndarray):
        return np.allclose(a, b, equal_nan=True, atol=1e-6)
    return a == b


@pytest.mark.slow
def test_concurrent_calls_give_the_serial_results(index: str, cmu_slide: Path, tmp_path: Path) -> None:
    work = _work(cmu_slide, index)
    with LocalBackend(cache_dir=tmp_path / "serial", device="cpu") as serial:
        expected = {name: call(serial) for name, call in work.items()}

    # A fresh backend and cache: the threads load the model, embed the slide (one of them;
    # the others wait for its store) and open the index, all at the same time.
    backend = LocalBackend(cache_dir=tmp_path / "concurrent", device="cpu")
    jobs = [(name, call) for name, call in work.items() for _ in range(2)]
    start = threading.Barrier(len(jobs))
    results: list[tuple[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(name: str, call: Callable[[LocalBackend], Any]) -> None:
        try:
            start.wait(timeout=60)
            value = call(backend)
            with lock:
                results.append((name, value))
        except BaseException as e:  # noqa: BLE001 - collected and re-raised below
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a call hung"
    if errors:
        raise errors[0]
    assert len(results) == len(jobs)
    for name, value in results:
        assert _same(value, expected[name]), name
    on_thread(backend.close)


def test_once_makes_each_key_once_and_a_slow_key_blocks_no_other() -> None:
    import time

    from backend.once import Once

    once: Once[object] = Once()
    made: list[str] = []
    slow_started = threading.Event()

    def make(key: str, seconds: float = 0.0) -> object:
        if seconds:
            slow_started.set()
            time.sleep(seconds)
        made.append(key)
        return object()

    slow = [on_thread_async(lambda: once.get("slow", lambda: make("slow", 1.0))) for _ in range(3)]
    assert slow_started.wait(10)
    t0 = time.monotonic()
    fast = once.get("fast", lambda: make("fast"))
    assert time.monotonic() - t0 < 0.5  # not held up by the slow key's load
    assert once.get("fast", lambda: make("again")) is fast
    results = [f() for f in slow]
    assert all(r is results[0] for r in results) and made.count("slow") == 1


def on_thread_async(call: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``call()`` on a thread; returns a function that joins it and gives its result."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("value", call()))
    t.start()

    def result() -> Any:
        t.join(timeout=30)
        return out["value"]

    return result
