"""Cohort indexing spread over a Ray cluster (``histoclip index --engine ray``).

Ray workers are actors that load the model once (one per GPU when the cluster has GPUs, else
one per requested worker) and embed slides into the shared per-slide embedding cache. The
driver alone writes the cohort index: as each slide finishes it loads that slide's
embeddings from the cache and adds them, so the index never has two writers.

Faults: an actor killed mid-slide is restarted by Ray and its task retried
(``max_restarts`` / ``max_task_retries``); the retry resumes from the slide's partial cache
store, so at most one batch is encoded twice. A driver killed midway leaves an index holding
whole slides only (see :mod:`backend.index.cohort`); rerun, it skips the slides already in the
index and, through the cache, the tiles already encoded.

Ray is an optional extra (``pip install napari-histoclip[distributed]``); nothing here is
imported unless this engine is used. The cache directory must be visible to every node (a
shared filesystem) when the cluster has more than one machine.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import api
from backend.errors import CancelledError, HistoclipError, InputError

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
    """One Ray actor: a LocalBackend with the model loaded once, embedding slides to the cache."""

    def __init__(self, model: str, tiles: api.TileOptions, cache_dir: str, device: str | None,
                 batch_size: int, threads: int) -> None:
        import torch

        from backend.local import LocalBackend

        torch.set_num_threads(max(1, threads))
        self.backend = LocalBackend(cache_dir, device, batch_size=batch_size, num_workers=1)
        self.model_name, self.tiles = model, tiles
        self.clip = self.backend.model(model)

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> tuple[str, int]:
        return str(self.clip.model_id), int(self.clip.embed_dim)

    def embed(self, path: str, slide_mpp: float | None) -> tuple[str, str]:
        """Embed one slide into the cache; ``("ok", "")`` or ``("failed", why)`` for a bad slide."""
        try:
            self.backend.embeddings(api.SlideRef(path, slide_mpp), self.model_name, self.tiles)
        except HistoclipError as e:
            return "failed", str(e)
        return "ok", ""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` of a running cluster (None: start a local one)."""

    address: str | None = None
    num_workers: int | None = None  # default: one per GPU, else one per CPU
    device: str | None = None
    batch_size: int = 32


def build_index_ray(
    request: api.IndexRequest,
    *,
    slide_mpp: float | None = None,
    options: RayOptions = RayOptions(),
    cache_dir: str | os.PathLike[str] | None = None,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.IndexInfo:
    """Embed the cohort's slides on Ray actors and build the index at ``request.index_path``.

    Returns the same :class:`backend.api.IndexInfo` as the local engine; slides already in
    the index are skipped without being sent to a worker.
    """
    from backend.embed import EmbeddingCache, lookup_cached
    from backend.index import CohortIndex
    from backend.index.store import DB_NAME
    from backend.local import _spec, expand_slides
    from backend.paths import cache_root
    from backend.slides import slide_fingerprint

    ray = _import_ray()
    slides = expand_slides(request.slides)
    cache = EmbeddingCache(cache_root(cache_dir) / "embeddings")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                 **({} if options.address else {"num_cpus": os.cpu_count() or 2}))
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = options.num_workers or (gpus or cpus)
        resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": max(1, cpus // n)}
        actor_cls = ray.remote(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)(_EmbedWorker)
        threads = max(1, cpus // n) if not gpus else 4
        actors = [
            actor_cls.options(**resources).remote(
                request.model, request.tiles, str(cache.root.parent), options.device, options.batch_size, threads
            )
            for _ in range(n)
        ]
        model_id, dim = ray.get(actors[0].describe.remote())
        path = Path(request.index_path)
        index = (CohortIndex.open(path) if (path / DB_NAME).exists()
                 else CohortIndex.create(path, model_id=model_id, dim=dim))
        try:
            return _drive(ray, actors, index, slides, slide_mpp, request, cache, model_id,
                          progress, cancel, slide_fingerprint, lookup_cached, _spec)
        finally:
            index.close()
            for a in actors:
                ray.kill(a)
    finally:
        if started_here:
            ray.shutdown()


def _drive(ray: Any, actors: list[Any], index: Any, slides: list[str], slide_mpp: float | None,
           request: api.IndexRequest, cache: Any, model_id: str, progress: Any, cancel: Any,
           fingerprint: Any, lookup_cached: Any, spec_of: Any) -> api.IndexInfo:
    """Keep every actor busy with one slide; add each finished slide to the index."""
    failed: list[tuple[str, str]] = []
    todo = []
    for path in slides:
        try:
            if not index.contains(fingerprint(path)):
                todo.append(path)
        except (HistoclipError, OSError) as e:
            failed.append((path, str(e)))
    done = len(slides) - len(todo) - len(failed)
    if progress is not None:
        progress(api.Progress(done, len(slides), f"{done} slides already in the index"))
    free, running = list(actors), {}
    queue = list(todo)
    while queue or running:
        if not free and not running:
            raise HistoclipError(f"every Ray worker was lost; {len(queue)} slides not indexed")
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"indexing stopped with {len(queue) + len(running)} slides to go")
        while queue and free:
            actor, path = free.pop(), queue.pop(0)
            running[actor.embed.remote(path, slide_mpp)] = (actor, path)
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for ref in ready:
            actor, path = running.pop(ref)
            try:
                status, why = ray.get(ref)
            except ray.exceptions.RayError as e:  # the actor died more often than Ray retries
                failed.append((path, f"worker lost {MAX_RETRIES + 1} times: {type(e).__name__}"))
                done += 1
                continue
            free.append(actor)
            if status == "failed":
                failed.append((path, why))
            else:
                emb = lookup_cached(path, model_id, spec_of(request.tiles), cache=cache, mpp=slide_mpp)
                if emb is None:  # the worker said done, so the store must be there
                    raise HistoclipError(f"{Path(path).name}: embeddings missing from the cache at {cache.root}")
                index.add(emb, path)
            done += 1
            if progress is not None:
                progress(api.Progress(done, len(slides), f"slide {Path(path).name}"))
    stats = index.stats()
    return api.IndexInfo(str(request.index_path), model_id, stats.n_slides, stats.n_live, tuple(failed))
