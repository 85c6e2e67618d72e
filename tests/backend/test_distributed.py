"""The Ray engine (``backend.distributed``) on a local 2-CPU Ray cluster.

Every Ray build is compared with a serial build (LocalBackend) of the same cohort: the
index must hold exactly the same (slide, tile box) records. The cohort is three generated
2048 px tissue slides cut into 64 px tiles (~1,000 tiles each, a few seconds of embedding
at batch size 4) plus kidney-48-5.tif, which has no mpp and must be reported as failed
while the others go on.

Fault tests kill real processes: an embedding actor mid-slide (SIGKILL to the process that
holds the slide's cache lock), and a ``histoclip index --engine ray`` driver in a
subprocess (SIGKILL to its process group). Whatever they started is cleaned up by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend import api
from backend.distributed import RayOptions, _check_reachable, _share, _worker_shape, build_index_ray
from backend.errors import InputError, ModelError
from backend.index import CohortIndex
from backend.index.store import DB_NAME, MetaStore
from backend.local import LocalBackend
from tests.support import cohort_data as cd

ray = pytest.importorskip("ray")

MODEL = "test-tiny"
TILES = api.TileOptions(tile_size=64, mpp=cd.MPP)
N_SLIDES = 3
NO_MPP = "kidney-48-5.tif"


@dataclass(frozen=True)
class Cohort:
    slides: tuple[str, ...]  # what an IndexRequest gets: the generated folder and the kidney
    names: tuple[str, ...]  # the generated slides' file names
    serial_index: Path
    serial: set[tuple[str, int, int, float]]  # (slide name, x, y, extent) of the serial build

    def request(self, index: Path) -> api.IndexRequest:
        return api.IndexRequest(self.slides, str(index), MODEL, TILES)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """One local cluster for the module ("local": never attach to another one on the host)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, testdata: Path, slides_dir: Path) -> Cohort:
    root = tmp_path_factory.mktemp("ray-cohort")
    paths, _ = cd.make_cohort(testdata, root / "slides", N_SLIDES, (2048, 2048), seed=50)
    slides = (str(root / "slides"), str(slides_dir / NO_MPP))
    serial_index = root / "serial-index"
    info = LocalBackend(root / "serial-cache", "cpu").build_index(
        api.IndexRequest(slides, str(serial_index), MODEL, TILES))
    assert info.n_slides == N_SLIDES and [Path(p).name for p, _ in info.failed] == [NO_MPP]
    records = cd.tile_records(serial_index)
    assert len(records) > 2000  # enough tiles that a slide takes seconds at batch size 4
    return Cohort(slides, tuple(p.name for p in paths), serial_index, records)


def _vectors_by_slide(index_path: Path) -> dict[str, np.ndarray]:
    """Each live slide's vectors (rows in tile order) from an index's store."""
    store = MetaStore(index_path / DB_NAME, read_only=True)
    try:
        dim = int(store.get_info("dim") or 0)
        return {s.slide_name: store.read_vectors(s, dim) for s in store.slides()}
    finally:
        store.close()


def _wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _all_cpus_free(r: Any) -> bool:
    return r.available_resources().get("CPU", 0) == r.cluster_resources().get("CPU", -1)


# --- no cluster needed ---------------------------------------------------------------------


def test_bad_options_fail_before_any_worker_starts(tmp_path: Path) -> None:
    request = api.IndexRequest((str(tmp_path),), str(tmp_path / "i"), MODEL, TILES)
    with pytest.raises(InputError, match="--workers: must be at least 1, got 0"):
        build_index_ray(request, options=RayOptions(num_workers=0))
    with pytest.raises(InputError, match="--batch-size"):
        build_index_ray(request, options=RayOptions(batch_size=0))
    with pytest.raises(InputError, match="no Ray cluster reachable there"):
        _check_reachable("127.0.0.1:1", timeout=2.0)  # Ray itself would retry for minutes


class _FakeRay:
    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


@pytest.mark.parametrize(
    ("resources", "workers", "expected"),
    [
        ({"CPU": 2}, None, ({"num_cpus": 1.0}, 1, 2)),
        ({"CPU": 8}, 2, ({"num_cpus": 4.0}, 4, 2)),
        # more workers than CPUs: fractions, so that all of them can be scheduled
        ({"CPU": 2}, 3, ({"num_cpus": 0.6666}, 1, 3)),
        ({"CPU": 16, "GPU": 2}, None, ({"num_gpus": 1.0, "num_cpus": 1}, 4, 2)),
        ({"CPU": 16, "GPU": 2}, 4, ({"num_gpus": 0.5, "num_cpus": 1}, 4, 4)),
    ],
)
def test_worker_shape(resources: dict[str, float], workers: int | None, expected: tuple) -> None:
    assert _worker_shape(_FakeRay(resources), RayOptions(num_workers=workers)) == expected
    assert _share(3, 7) * 7 <= 3  # never more than the cluster has


_STARTS_AND_STOPS = """
import json, sys, time
import psutil, ray
from backend import api
from backend.distributed import RayOptions, build_index_ray

# 64 px at 2 µm/px: ~1/16 of the cohort's tiles (what is tested is Ray's start and stop, not the embedding).
request = api.IndexRequest((sys.argv[1],), sys.argv[2], "test-tiny", api.TileOptions(64, 2.0))
info = build_index_ray(request, options=RayOptions(num_workers=1), cache_dir=sys.argv[3])
end = time.monotonic() + 15  # Ray's processes take a moment to exit after shutdown
while psutil.Process().children(recursive=True) and time.monotonic() < end:
    time.sleep(0.2)
left = [" ".join(c.cmdline()[:1]) for c in psutil.Process().children(recursive=True)]
print(json.dumps({"initialized": ray.is_initialized(), "slides": info.n_slides, "left": left}))
"""


def test_a_build_that_started_ray_shuts_it_down(cohort: Cohort, tmp_path: Path) -> None:
    """In a fresh process (this module's cluster would be reused otherwise)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    slide = Path(cohort.slides[0]) / cohort.names[0]
    proc = subprocess.run([sys.executable, "-c", _STARTS_AND_STOPS, str(slide), str(tmp_path / "index"),
                           str(tmp_path / "cache")], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"initialized": False, "slides": 1, "left": []}


# --- on the module's cluster ---------------------------------------------------------------


def test_ray_build_equals_serial_build_and_rerun_skips(ray_cluster: Any, cohort: Cohort, tmp_path: Path) -> None:
    events: list[api.Progress] = []
    index = tmp_path / "index"
    info = build_index_ray(cohort.request(index), options=RayOptions(num_workers=2), cache_dir=tmp_path / "cache",
                           progress=events.append)
    assert (info.n_slides, info.model_id) == (N_SLIDES, MODEL)
    assert [Path(p).name for p, _ in info.failed] == [NO_MPP] and "no microns-per-pixel" in info.failed[0][1]
    assert events[0] == api.Progress(0, N_SLIDES + 1, "0 slides already in the index")
    assert events[-1].done == events[-1].total == N_SLIDES + 1
    assert cd.tile_records(index) == cohort.serial
    assert info.n_vectors == len(cohort.serial)
    ours, theirs = _vectors_by_slide(index), _vectors_by_slide(cohort.serial_index)
    for name in cohort.names:
        np.testing.assert_allclose(ours[name], theirs[name], atol=2e-3)  # float16 in the store
    assert ray_cluster.is_initialized()  # not ours to shut down
    _wait_until(lambda: _all_cpus_free(ray_cluster), 20, "the build's actors to be released")

    # A rerun sends no slide to a worker: only the failed one is tried again.
    events.clear()
    again = build_index_ray(cohort.request(index), options=RayOptions(num_workers=1), cache_dir=tmp_path / "cache",
                            progress=events.append)
    assert events[0].stage == f"{N_SLIDES} slides already in the index"
    assert [e.stage for e in events[1:]] == [f"slide {NO_MPP} (failed)"]
    assert (again.n_slides, again.n_vectors) == (info.n_slides, info.n_vectors)


def test_bad_model_is_one_clear_error_even_with_more_workers_than_cpus(ray_cluster: Any, cohort: Cohort,
                                                                         tmp_path: Path) -> None:
    request = api.IndexRequest(cohort.slides, str(tmp_path / "index"), "no-such-model", TILES)
    cancel = threading.Event()
    timer = threading.Timer(90, cancel.set)  # a hang (unschedulable worker) fails, not blocks
    timer.start()
    try:
        with pytest.raises(ModelError, match="Ray workers could not load model 'no-such-model'"):
            build_index_ray(request, options=RayOptions(num_workers=3), cache_dir=tmp_path / "cache", cancel=cancel)
    finally:
        timer.cancel()
    assert not (tmp_path / "index").exists()  # nothing created before the model was known
    _wait_until(lambda: _all_cpus_free(ray_cluster), 20, "the failed build's actors to be released")


def _lock_holder(lock: Path) -> int | None:
    """The pid holding a flock on ``lock``, from /proc/locks (Linux)."""
    try:
        inode = os.stat(lock).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            return int(fields[4])
    return None


def _partial_store(cache: Path, min_done: int) -> tuple[Path, int] | None:
    """A partial embedding store with at least ``min_done`` rows written, and its done count."""
    for meta in cache.glob("embeddings/*/*/*.partial.zarr/zarr.json"):
        try:
            done = int(json.loads(meta.read_text())["attributes"].get("done", 0))
        except (OSError, ValueError, KeyError):
            continue
        if done >= min_done:
            return meta.parent, done
    return None


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="finds the embedding process through /proc/locks")
def test_worker_killed_mid_slide_is_restarted_and_resumes(ray_cluster: Any, cohort: Cohort, tmp_path: Path) -> None:
    cache, index = tmp_path / "cache", tmp_path / "index"
    events: list[api.Progress] = []
    result: dict[str, Any] = {}
    cancel = threading.Event()

    def build() -> None:
        try:
            result["info"] = build_index_ray(cohort.request(index), options=RayOptions(num_workers=2, batch_size=4),
                                             cache_dir=cache, progress=events.append, cancel=cancel)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    try:
        # Past the first 256-row chunk of vectors, so the resume below is visible on disk.
        store, done = _wait_until(lambda: _partial_store(cache, 300), 120, "a slide 300 tiles into embedding")
        lock = store.with_name(store.name.replace(".partial.zarr", ".lock"))
        pid = _wait_until(lambda: _lock_holder(lock), 5, f"the process holding {lock.name}")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline.startswith(b"ray::"), cmdline  # an actor of ours, not some other process
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        thread.join(180)
        assert not thread.is_alive(), "the build did not finish after a worker was killed"
    finally:
        cancel.set()
        thread.join(30)
    if "error" in result:
        raise result["error"]
    info = result["info"]

    assert [Path(p).name for p, _ in info.failed] == [NO_MPP]
    restarted = [e.stage for e in events if f"worker restarted: pid {pid} ->" in e.stage]
    assert len(restarted) == 1, [e.stage for e in events]
    assert cd.tile_records(index) == cohort.serial
    final = store.with_name(store.name.replace(".partial.zarr", ".zarr"))
    # The retry resumed from the partial store: the first chunk was not written again.
    assert (final / "vectors" / "c" / "0" / "0").stat().st_mtime < killed_at, f"killed at done={done}"
    ours, theirs = _vectors_by_slide(index), _vectors_by_slide(cohort.serial_index)
    for name in cohort.names:
        np.testing.assert_allclose(ours[name], theirs[name], atol=2e-3)
    _wait_until(lambda: _all_cpus_free(ray_cluster), 20, "the build's actors to be released")


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _reap(pids: list[int], timeout: float) -> list[int]:
    """Wait for ``pids`` to exit; SIGKILL those still running after ``timeout`` and return them."""
    import psutil

    procs = []
    for pid in set(pids):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    end = time.monotonic() + timeout
    while any(running(p) for p in procs) and time.monotonic() < end:
        time.sleep(0.2)
    left = [p for p in procs if running(p)]
    for p in left:
        p.kill()
    return [p.pid for p in left]


@pytest.mark.slow
def test_driver_killed_midway_rerun_skips_finished_slides(ray_cluster: Any, cohort: Cohort, tmp_path: Path) -> None:
    cache, index = tmp_path / "cache", tmp_path / "index"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster
    env["HISTOCLIP_CACHE_DIR"] = str(cache)
    cmd = [sys.executable, "-m", "backend.cli", "index", *cohort.slides, "--out", str(index), "--engine", "ray",
           "--workers", "2", "--model", MODEL, "--mpp", str(TILES.mpp), "--tile-size", str(TILES.tile_size),
           "--batch-size", "4"]
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    family: list[int] = []
    try:
        def indexed() -> list[str] | None:
            if proc.poll() is not None:
                log_text = (tmp_path / "driver.log").read_text()
                raise AssertionError(f"driver exited early ({proc.returncode}): {log_text}")
            if not (index / DB_NAME).exists():
                return None
            with CohortIndex.open(index, read_only=True) as opened:
                return [s.slide_name for s in opened.slides()] or None

        _wait_until(indexed, 150, "the first slide in the index", interval=0.1)
        family = _descendants(proc.pid)  # Ray's processes, started by the driver
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:  # the test failed before the kill: still clean up
            family = family or _descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        # Ray's processes (raylet, GCS, workers in process groups of their own) follow the
        # driver down within seconds; whatever does not is killed here, and reported below.
        stragglers = _reap(family, timeout=20)

    with CohortIndex.open(index) as opened:  # a writer open: runs the recovery
        first = {s.slide_name: s.slide_id for s in opened.slides()}
    assert 1 <= len(first) < N_SLIDES, f"killed too late to test a resume: {sorted(first)}"
    stores = {p: p.stat().st_mtime_ns for p in cache.glob("embeddings/*/*/*.zarr/zarr.json")
              if ".partial" not in str(p)}

    events: list[api.Progress] = []
    info = build_index_ray(cohort.request(index), options=RayOptions(num_workers=2, batch_size=4), cache_dir=cache,
                           progress=events.append)
    assert events[0].stage == f"{len(first)} slides already in the index"
    sent = {e.stage.split()[1] for e in events[1:]}
    assert sent == (set(cohort.names) - set(first)) | {NO_MPP}  # finished slides never sent again
    assert (info.n_slides, [Path(p).name for p, _ in info.failed]) == (N_SLIDES, [NO_MPP])
    assert cd.tile_records(index) == cohort.serial
    with CohortIndex.open(index, read_only=True) as opened:
        assert {s.slide_name: s.slide_id for s in opened.slides() if s.slide_name in first} == first
    assert all(p.stat().st_mtime_ns == t for p, t in stores.items())  # finished stores untouched
    assert not stragglers, f"Ray processes outlived the killed driver: {stragglers}"
