"""Cohort indexing spread over a Ray cluster (``histoclip index --engine ray``).

Ray workers are actors that load the model once (one per GPU when the cluster has GPUs, else
one per CPU, or as many as asked) and embed slides into the shared per-slide embedding
cache. The driver alone writes the cohort index: as each slide finishes it loads that
slide's embeddings from the cache and adds them, so the index never has two writers.

Faults: an actor killed mid-slide is restarted by Ray and its task retried
(``max_restarts`` / ``max_task_retries``); the retry resumes from the slide's partial cache
store, so at most one batch is encoded twice. The driver notices the restart (the worker's
process id changed) and reports it. A driver killed midway leaves an index holding whole
slides only (see :mod:`backend.index.cohort`); rerun, it skips the slides already in the
index without sending them to a worker and, through the cache, the tiles already encoded.

Ray is an optional extra (``pip install napari-histoclip[distributed]``); nothing here is
imported unless this engine is used. The cache directory must be visible to every node (a
shared filesystem) when the cluster has more than one machine.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import api
from backend.errors import CancelledError, HistoclipError, InputError, ModelError

log = logging.getLogger(__name__)

#: How often Ray restarts a dead embedding actor and retries its slide before giving up.
MAX_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise InputError(
            "--engine ray: Ray is not installed; pip install 'napari-histoclip[distributed]' "
            "or use --engine local"
        ) from e
    return ray


class _EmbedWorker:
    """One Ray actor: a backend's resources with the model loaded once, embedding slides to the cache."""

    def __init__(self, model: str, tiles: api.TileOptions, cache_dir: str, device: str | None,
                 batch_size: int, threads: int) -> None:
        import torch

        from backend.resources import Resources

        torch.set_num_threads(max(1, threads))
        self.resources = Resources(cache_dir, device, batch_size=batch_size, num_workers=1)
        self.model_name, self.tiles = model, tiles
        # A bad model name is the user's error, not a crash: keep it for describe(), so the
        # driver raises it as one line (an exception here would kill the actor with a
        # traceback, and Ray would restart it to fail again).
        self.clip: Any = None
        self.error = ""
        try:
            self.clip = self.resources.model(model)
        except HistoclipError as e:
            self.error = str(e)

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> tuple[str, int, int, str]:
        """``(model id, embedding dim, pid, error)``; ``error`` is empty if the model loaded."""
        if self.clip is None:
            return "", 0, os.getpid(), self.error
        return str(self.clip.model_id), int(self.clip.embed_dim), os.getpid(), ""

    def embed(self, path: str, slide_mpp: float | None) -> tuple[str, str, int]:
        """Embed one slide into the cache: ``(status, why, pid)``, status ``ok`` or ``failed``."""
        try:
            self.resources.embeddings(api.SlideRef(path, slide_mpp), self.model_name, self.tiles)
        except HistoclipError as e:
            return "failed", str(e), os.getpid()
        return "ok", "", os.getpid()


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` of a running cluster (None: ``$RAY_ADDRESS``, else a new
    local cluster), workers (None: one per GPU, else one per CPU), device and batch size."""

    address: str | None = None
    num_workers: int | None = None
    device: str | None = None
    batch_size: int = 32


def _check_options(options: RayOptions) -> None:
    if options.num_workers is not None and options.num_workers < 1:
        raise InputError(f"--workers: must be at least 1, got {options.num_workers}")
    if options.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {options.batch_size}")


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or "/" in hostport:
        return  # "auto", "local" or a form Ray resolves itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"--ray-address {address}: no Ray cluster reachable there ({e.strerror or e})") from e


def _start_ray(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) a cluster unless this process already is; True if we did."""
    if ray.is_initialized():
        return False
    # "local" starts a new cluster even when another one runs on this machine: connecting to
    # a stranger's cluster must be asked for (--ray-address or $RAY_ADDRESS).
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        _check_reachable(address)
    extra = {"num_cpus": os.cpu_count() or 2} if address == "local" else {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **extra)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"Ray cluster at {address!r}: cannot start or connect ({e})") from e
    return True


def _share(total: float, n: int) -> float:
    """Resources per worker: whole units when there are enough, else a fraction (Ray accepts
    fractions below 1 only), so asking for more workers than units never leaves some
    unschedulable (which would hang the build)."""
    per = total / n
    return float(math.floor(per)) if per >= 1 else math.floor(per * 1e4) / 1e4


def build_index_ray(
    request: api.IndexRequest,
    *,
    options: RayOptions = RayOptions(),
    cache_dir: str | os.PathLike[str] | None = None,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.IndexInfo:
    """Embed the cohort's slides on Ray actors and build the index at ``request.index_path``.

    Parameters
    ----------
    request
        Slides (files or folders), index directory, model, tile options, and the µm per
        pixel for the slides whose metadata has none (``slide_mpp``; others keep theirs).
    options
        Cluster address, workers, device, batch size.
    cache_dir
        Embedding cache root (default ``$HISTOCLIP_CACHE_DIR``); shared by all nodes.
    progress, cancel
        Slide-level progress events (the first says how many slides were already in the
        index) and a cancel signal (checked every second).

    Returns
    -------
    IndexInfo
        As the local engine's; slides already in the index are skipped without being sent
        to a worker, slides that cannot be embedded are listed in ``failed``.
    """
    from backend.embed import EmbeddingCache
    from backend.models.identity import recordable_model_name
    from backend.paths import cache_root
    from backend.slides import expand_slides

    _check_options(options)
    slides = expand_slides(request.slides)
    ray = _import_ray()
    cache = EmbeddingCache(cache_root(cache_dir) / "embeddings")
    started_here = _start_ray(ray, options)
    actors: list[Any] = []
    try:
        resources, threads, n = _worker_shape(ray, options)
        actor_cls = ray.remote(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)(_EmbedWorker)
        args = (request.model, request.tiles, str(cache.root.parent), options.device, options.batch_size, threads)
        actors = [actor_cls.options(**resources).remote(*args) for _ in range(n)]
        model_id, dim, pids = _wait_for_workers(ray, actors, request.model, cancel)
        from backend.index import CohortIndex

        index = CohortIndex.open_or_create(request.index_path, model_id=model_id, dim=dim,
                                           model_name=recordable_model_name(request.model))
        try:
            return _Driver(ray, actors, pids, index, cache, request, model_id, progress, cancel).run(
                slides, request.slide_mpp)
        finally:
            index.close()
    finally:
        for a in actors:
            ray.kill(a)  # no_restart: a finished build leaves no actor behind
        if started_here:
            ray.shutdown()


def _worker_shape(ray: Any, options: RayOptions) -> tuple[dict[str, float], int, int]:
    """Per-actor resources, torch threads per actor, and the number of actors."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), max(1, int(total.get("CPU", 1)))
    n = options.num_workers or gpus or cpus
    if gpus:  # one GPU each (shared when more workers than GPUs are asked for)
        return {"num_gpus": min(1.0, _share(gpus, n)), "num_cpus": 1}, 4, n
    share = _share(cpus, n)
    return {"num_cpus": share}, max(1, int(share)), n


def _wait_for_workers(ray: Any, actors: list[Any], model: str,
                      cancel: threading.Event | None) -> tuple[str, int, list[int]]:
    """Wait (cancellably) until every actor has loaded the model; its id, dim and the pids."""
    refs = [a.describe.remote() for a in actors]
    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        if len(ready) == len(refs):
            break
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"indexing stopped while {len(refs) - len(ready)} Ray workers were starting")
    try:
        described = ray.get(refs)
    except ray.exceptions.RayError as e:
        raise HistoclipError(f"Ray workers could not start: {_last_line(e)}") from e
    errors = [err for *_, err in described if err]
    if errors:
        raise ModelError(f"Ray workers could not load model {model!r}: {errors[0]}")
    # e.g. machines whose hub caches hold different snapshots of the model: their embeddings
    # cannot share one index
    from backend.models.identity import check_same_weights

    for i, d in enumerate(described[1:], start=1):
        check_same_weights(
            f"the part of the index embedded by Ray worker 0 (model {model!r})", described[0][0], d[0],
            "Give every machine the same weights (pin one with --model)",
            loaded_by=f"model {model!r} on Ray worker {i}",
        )
    model_id, dim = described[0][0], described[0][1]
    return model_id, dim, [pid for _, _, pid, _ in described]


def _last_line(e: BaseException) -> str:
    """The final line of a Ray error, which names the original exception and message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


class _Driver:
    """Keeps every actor busy with one slide and adds each finished slide to the index."""

    def __init__(self, ray: Any, actors: list[Any], pids: list[int], index: Any, cache: Any,
                 request: api.IndexRequest, model_id: str, progress: api.ProgressCallback | None,
                 cancel: threading.Event | None) -> None:
        self.ray, self.actors, self.pids = ray, actors, list(pids)
        self.index, self.cache, self.request, self.model_id = index, cache, request, model_id
        self.progress, self.cancel = progress, cancel
        self.failed: list[tuple[str, str]] = []

    def _report(self, done: int, total: int, stage: str) -> None:
        if self.progress is not None:
            self.progress(api.Progress(done, total, stage))

    def _plan(self, slides: list[str], slide_mpp: float | None) -> list[tuple[str, float | None]]:
        """The slides still to embed, each with the mpp to open it with."""
        from backend.resources import slide_mpp_fallback
        from backend.slides import slide_fingerprint

        todo = []
        for path in slides:
            try:
                if not self.index.contains(slide_fingerprint(path)):
                    todo.append((path, slide_mpp_fallback(path, slide_mpp)))
            except (HistoclipError, OSError) as e:
                self.failed.append((path, str(e)))
        return todo

    def run(self, slides: list[str], slide_mpp: float | None) -> api.IndexInfo:
        todo = self._plan(slides, slide_mpp)
        skipped = len(slides) - len(todo) - len(self.failed)
        done = len(slides) - len(todo)
        self._report(done, len(slides), f"{skipped} slides already in the index")
        free = list(range(len(self.actors)))
        running: dict[Any, tuple[int, str, float | None]] = {}
        queue = list(todo)
        while queue or running:
            if not free and not running:
                raise HistoclipError(f"every Ray worker was lost; {len(queue)} slides not indexed")
            if self.cancel is not None and self.cancel.is_set():
                raise CancelledError(f"indexing stopped with {len(queue) + len(running)} slides to go")
            while queue and free:
                i, (path, mpp) = free.pop(), queue.pop(0)
                running[self.actors[i].embed.remote(path, mpp)] = (i, path, mpp)
            ready, _ = self.ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                i, path, mpp = running.pop(ref)
                note = self._finish(ref, i, path, mpp, free)
                done += 1
                self._report(done, len(slides), f"slide {Path(path).name}{note}")
        stats = self.index.stats()
        return api.IndexInfo(str(self.request.index_path), self.model_id, stats.n_slides, stats.n_live,
                             tuple(self.failed))

    def _finish(self, ref: Any, i: int, path: str, mpp: float | None, free: list[int]) -> str:
        """Collect one slide's result; add it to the index. Returns a note for the progress."""
        from backend.embed import lookup_cached

        name = Path(path).name
        try:
            status, why, pid = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:  # died more often than Ray restarts it
            self.failed.append((path, f"Ray worker lost {MAX_RETRIES + 1} times: {_last_line(e)}"))
            return " (worker lost)"
        except self.ray.exceptions.RayTaskError as e:  # a bug or an OS error inside the worker
            free.append(i)
            self.failed.append((path, f"Ray worker failed: {_last_line(e)}"))
            return " (failed)"
        free.append(i)
        note = ""
        if pid != self.pids[i]:
            log.warning("Ray worker %d was restarted (pid %d -> %d); %s was retried", i, self.pids[i], pid, name)
            note = f" (worker restarted: pid {self.pids[i]} -> {pid})"
            self.pids[i] = pid
        if status == "failed":
            self.failed.append((path, why))
            return note + " (failed)"
        emb = lookup_cached(path, self.model_id, self.request.tiles.to_spec(), cache=self.cache, mpp=mpp)
        if emb is None:  # the worker said done, so the store must be there
            raise HistoclipError(f"{name}: embeddings missing from the cache at {self.cache.root} "
                                 "(is the cache directory shared by every Ray node?)")
        self.index.add(emb, path)
        return note


def embed_cohort_ray(
    slides: list[str],
    model: str,
    tiles: api.TileOptions,
    *,
    options: RayOptions = RayOptions(),
    cache_dir: str | os.PathLike[str] | None = None,
    slide_mpp: float | None = None,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> list[tuple[str, str]]:
    """Embed into the cache, on Ray actors, the slides of ``slides`` not cached yet (no index):
    what a cohort task that reads cached embeddings (slide-level triage) needs first.

    Returns the ``(slide path, why)`` of slides that could not be embedded; a cancel stops
    between slides (those finished stay cached).
    """
    from backend.embed import EmbeddingCache, lookup_cached
    from backend.paths import cache_root
    from backend.resources import slide_mpp_fallback

    _check_options(options)
    ray = _import_ray()
    cache = EmbeddingCache(cache_root(cache_dir) / "embeddings")
    started_here = _start_ray(ray, options)
    actors: list[Any] = []
    failed: list[tuple[str, str]] = []
    try:
        resources, threads, n = _worker_shape(ray, options)
        actor_cls = ray.remote(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)(_EmbedWorker)
        args = (model, tiles, str(cache.root.parent), options.device, options.batch_size, threads)
        actors = [actor_cls.options(**resources).remote(*args) for _ in range(n)]
        model_id, _, _ = _wait_for_workers(ray, actors, model, cancel)
        queue: list[tuple[str, float | None]] = []
        for path in slides:
            try:
                mpp = slide_mpp_fallback(path, slide_mpp)
                if lookup_cached(path, model_id, tiles.to_spec(), cache=cache, mpp=mpp) is None:
                    queue.append((path, mpp))
            except (HistoclipError, OSError) as e:
                failed.append((path, str(e)))
        done = len(slides) - len(queue)
        if progress is not None:
            progress(api.Progress(done, len(slides), f"embedding: {done} slides cached or unreadable"))
        free = list(range(len(actors)))
        running: dict[Any, tuple[int, str]] = {}  # a Ray ObjectRef: (actor index, slide path)
        while queue or running:
            if not free and not running:
                raise HistoclipError(f"every Ray worker was lost; {len(queue)} slides not embedded")
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"embedding stopped with {len(queue) + len(running)} slides to go")
            while queue and free:
                i, (path, mpp) = free.pop(), queue.pop(0)
                running[actors[i].embed.remote(path, mpp)] = (i, path)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                i, path = running.pop(ref)
                try:
                    status, why, _ = ray.get(ref)
                    free.append(i)
                except ray.exceptions.RayActorError as e:  # died more often than Ray restarts it
                    status, why = "failed", f"Ray worker lost {MAX_RETRIES + 1} times: {_last_line(e)}"
                except ray.exceptions.RayTaskError as e:
                    free.append(i)
                    status, why = "failed", f"Ray worker failed: {_last_line(e)}"
                if status == "failed":
                    failed.append((path, why))
                done += 1
                if progress is not None:
                    progress(api.Progress(done, len(slides), f"embedded {Path(path).name}"))
        return failed
    finally:
        for a in actors:
            ray.kill(a)
        if started_here:
            ray.shutdown()
