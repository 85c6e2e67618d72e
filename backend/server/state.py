"""What one server holds: its backend, catalogs, tokens and jobs, and the rules that turn a
client's request (ids) into a backend call (server paths) and its result back (ids).

Requests come in by declaration: :mod:`backend.server.resources` says, per request type, which
fields name a slide, a bundle, an index or a corpus (its ids or listed names become server
paths, checked inside their roots), and ``model`` fields are a registry name or a bundle under
``--models`` (``hf-hub:`` ids only with ``allow_hub_models``;
:func:`~backend.models.registry.model_name_kind` tells them apart): never a server path a client
makes up. Results go out generically: every absolute path in them becomes an id or a
root-relative name.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import threading
from typing import Any, overload

from backend import api
from backend.errors import CancelledError, InputError, UnknownModelError
from backend.remote.wire import Call, CallTimeoutError, EmbedRequest
from backend.server.auth import TokenStore
from backend.server.catalog import Catalog, EntryKind
from backend.server.config import ServerConfig
from backend.server.jobs import Job, JobManager
from backend.server.resources import Resource, declared

log = logging.getLogger("histoclip.server")


class ServerState:
    """The objects behind one app; every method may be called from any thread."""

    def __init__(self, config: ServerConfig, backend: Any | None = None) -> None:
        self.config = config.resolved()
        self.tokens = TokenStore(self.config.tokens_path)
        self.slides = Catalog(EntryKind.SLIDE, self.config.slide_roots)
        self.indexes = Catalog(EntryKind.INDEX, self.config.index_roots)
        self.bundles = Catalog(EntryKind.BUNDLE, self.config.model_roots)
        self.corpora = Catalog(EntryKind.CORPUS, self.config.corpus_roots)
        if backend is None:
            from backend.local import LocalBackend

            backend = LocalBackend(self.config.cache_dir, self.config.device,
                                   batch_size=self.config.batch_size, num_workers=self.config.num_workers)
        self.backend = backend
        limits = self.config.limits
        self.jobs = JobManager(self.config.state_dir, workers=self.config.workers,
                               interactive_workers=self.config.interactive_workers,
                               max_queued=limits.max_queued, max_per_token=limits.max_jobs_per_token,
                               public_error=self.public_error, public_text=self.public_text)
        from backend.server.batching import Encoders

        self.batcher = Encoders(backend, max_batch=self.config.batch_max, max_wait_ms=self.config.batch_wait_ms)
        from backend.server.pixels import SlidePool

        self.pixels = SlidePool()  # open slides for display tiles, thumbnails and slide info
        from backend.server.writers import WriteLocks

        self.writers = WriteLocks()  # one build of an index (one save of a bundle) at a time
        self._names: frozenset[str] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.jobs.close()
        self.batcher.close()
        self.pixels.close()
        try:
            self.backend.close()
        except Exception as e:  # noqa: BLE001 - the process is ending; say what was not closed
            # LocalBackend keeps index readers opened on worker threads; sqlite refuses to
            # close them from the shutdown thread. The OS releases them as the process exits.
            log.warning("closing the backend at shutdown failed (%s: %s)", type(e).__name__, e)

    # --- auth -------------------------------------------------------------------------------

    def authorize(self, token: str | None) -> str | None:
        """The token's name; with no tokens configured (loopback or --insecure) everyone is
        ``anonymous``."""
        found = self.identify(token)
        return None if found is None else found[0]

    def identify(self, token: str | None) -> tuple[str, str] | None:
        """(name, id) of the token: the name for audit lines, the never-reused id owns jobs."""
        if len(self.tokens) == 0:
            return ("anonymous", "anonymous")
        return self.tokens.identify(token)

    # --- models -----------------------------------------------------------------------------

    def registry_names(self) -> frozenset[str]:
        with self._lock:
            if self._names is None:
                from backend.models import list_models

                self._names = frozenset(e.name for e in list_models())
            return self._names

    @overload
    def model(self, name: str) -> str: ...
    @overload
    def model(self, name: None) -> None: ...
    @overload
    def model(self, name: str | None) -> str | None: ...
    def model(self, name: str | None) -> str | None:
        from backend.models.registry import NameKind, model_name_kind

        if name is None or name in self.registry_names():
            return name
        # A bundle is a catalog entry under --models, never a folder the client names.
        kind = model_name_kind(name) if isinstance(name, str) else NameKind.UNKNOWN
        if kind is NameKind.REGISTERED or (self.config.allow_hub_models and kind is NameKind.HUB):
            return name
        try:
            return self.bundles.resolve(name)
        except Exception as e:  # noqa: BLE001 - a clear error below names the choices
            bundles = [b.relpath for b in self.bundles.entries()]
            choices = ", ".join(sorted(self.registry_names()) + bundles)
            raise UnknownModelError(f"model {str(name)[:200]!r}: not on this server; choose one of {choices}") from e

    # --- requests in, results out -----------------------------------------------------------

    def check_limits(self, request: Any, route: str = "request") -> None:
        """Regions per request and pixels per region, ``k``, tiles, classes, caption length:
        422 or 413 past the server's limits (the one check every call route goes through)."""
        limits = self.config.limits
        regions = getattr(request, "regions", None)
        if regions is not None and len(regions) > limits.max_regions:
            raise InputError(f"regions: {len(regions)} regions, this server takes at most {limits.max_regions} per request")
        single = getattr(request, "region", None)
        for i, region in enumerate(list(regions or ()) + ([single] if single is not None else [])):
            _, _, w, h = region.bounds
            if w * h > limits.max_region_pixels:
                raise InputError(
                    f"region {i}: {w:.0f} x {h:.0f} level-0 pixels is more than this server's "
                    f"{limits.max_region_pixels} per region; draw a smaller region"
                )
        k = getattr(request, "k", None)
        if isinstance(k, int) and not 1 <= k <= limits.max_k:
            raise InputError(f"k: {k} hits asked for; between 1 and {limits.max_k}")
        from backend.server.bounds import check_request

        check_request(request, limits, route)

    def check_work(self, request: Any, route: str) -> None:
        """The tile grid of each slide of ``request`` (server paths) within ``max_tiles``: 413
        before any allocation (see :mod:`backend.server.bounds`)."""
        from backend.server.bounds import check_work

        check_work(request, self.config.limits, self.pixels, route)

    def localize(self, request: Any) -> Any:
        """``request`` with the client's names in its declared resource fields replaced by server
        paths (raises on unknown names; see :mod:`backend.server.resources`)."""
        return self._localize(request)

    def _localize(self, obj: Any) -> Any:
        if isinstance(obj, tuple):
            return tuple(self._localize(v) for v in obj)
        if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            return obj
        resources = declared(type(obj))
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            kind = resources.get(f.name)
            changes[f.name] = self._localize(value) if kind is None else self._resolve(kind, value, f.name)
        return dataclasses.replace(obj, **changes)

    def _resolve(self, kind: Resource, value: Any, field: str) -> Any:
        """The server path(s) for ``value``, a client's name of a ``kind`` resource."""
        if kind is Resource.MODEL:
            return self.model(value)
        if kind is Resource.SLIDES:
            keys = (value,) if isinstance(value, str) else value
            if not all(isinstance(v, str) for v in keys):
                raise InputError(f"{field}: expected slide ids or listed names, got {type(value).__name__}")
            return tuple(os.path.realpath(e.path) for key in keys for e in self.slides.expand(key))
        if kind is Resource.SLIDE:  # the catalogs refuse what is not a listed id or name
            return self.slides.resolve(value)
        if kind is Resource.BUNDLE:
            return self.bundles.resolve(value)
        if kind is Resource.NEW_BUNDLE:  # a request's own path is what it writes: a new bundle
            return self.bundles.new_path(value, field)
        if kind is Resource.INDEX:
            return self.indexes.resolve(value)
        if kind is Resource.NEW_OR_INDEX:
            try:
                return self.indexes.resolve(value)
            except Exception:  # noqa: BLE001 - building: an unknown name is a new index
                return self.indexes.new_path(value, field)
        if kind is Resource.CORPUS:
            return self.corpora.resolve(value)
        raise AssertionError(f"{kind}: no rule")  # every Resource has a branch above

    def public(self, obj: Any, field: str = "") -> Any:
        """``obj`` (a result) with server paths replaced by ids or root-relative names."""
        if isinstance(obj, str):
            return self._public_path(obj, field)
        if isinstance(obj, tuple):
            return tuple(self.public(v, field) for v in obj)
        if isinstance(obj, list):
            return [self.public(v, field) for v in obj]
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = dataclasses.fields(obj)
            return dataclasses.replace(obj, **{f.name: self.public(getattr(obj, f.name), f.name) for f in fields})
        return obj

    def public_error(self, error: dict[str, Any]) -> dict[str, Any]:
        """An error body (``{"type", "message", "path", "cause"}``) as a client may see it: its
        ``path`` an id, and no absolute server path in its text (see :func:`scrub_paths`)."""
        out = dict(error)
        if "path" in out:
            out["path"] = self.public(str(out["path"]), "path")
        for key in ("message", "cause"):
            if isinstance(out.get(key), str):
                out[key] = self.public_text(out[key])
        return out

    def public_text(self, text: str) -> str:
        """``text`` (a message, a progress stage) without absolute server paths."""
        return scrub_paths(text, [r for c in (self.slides, self.indexes, self.bundles) for r in c.roots])

    def _public_path(self, text: str, field: str) -> str:
        if not os.path.isabs(text):
            return text
        for catalog in (self.slides, self.indexes, self.bundles):
            found = catalog.public(text)
            if found is not None:
                return found
            for root in catalog.roots:
                if os.path.commonpath([os.path.realpath(text), str(root)]) == str(root):
                    return os.path.relpath(os.path.realpath(text), root)
        # A path outside every root (an index built elsewhere): its name, never the server's layout.
        return os.path.basename(text) if field.endswith("path") or field in ("failed", "slides") else text

    # --- running ----------------------------------------------------------------------------

    def run(self, call: Call, request: Any, job: Job) -> Any:
        """Run ``call`` on the backend in a worker thread, with the job's progress and cancel."""
        method = getattr(self.backend, call.method)
        params = inspect.signature(method).parameters
        kwargs: dict[str, Any] = {}
        if "progress" in params:
            kwargs["progress"] = self.jobs.progress_of(job)
        if "cancel" in params:
            kwargs["cancel"] = job.cancel
        writes = {"build_index": self.indexes, "save_classifier": self.bundles}.get(call.method)
        limit = self.config.timeout_for(call.route)
        expired = threading.Event()
        timer = None
        if limit is not None:  # counted from when a worker takes the call, not while it queues

            def expire() -> None:
                expired.set()
                job.cancel.set()  # the backend stops at its next check (the next batch)

            timer = threading.Timer(limit, expire)
            timer.daemon = True
            timer.start()
        target = {"build_index": "index_path", "save_classifier": "path"}.get(call.method)
        try:
            if isinstance(request, EmbedRequest):
                result = method(request.slide, request.model, request.tiles, **kwargs)
            elif target is not None:  # a second build of the same index waits, then resumes it
                with self.writers.writing(getattr(request, target), job.id, cancel=job.cancel,
                                          progress=kwargs.get("progress")):
                    result = method(request, **kwargs)
            else:
                result = method(request, **kwargs)
        except CancelledError as e:
            if expired.is_set():
                raise CallTimeoutError(
                    f"{call.route}: stopped after {limit:g} s, this server's time limit for the call "
                    "(histoclip serve --call-timeout); what was embedded stays cached, so running it "
                    "again resumes"
                ) from e
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if writes is not None:  # even a failed build may have written an index that can be resumed
                writes.invalidate()
        return self.public(result)

    def slide_of(self, request: Any) -> str:
        """The slide id a request is about, for the audit log."""
        slide = getattr(request, "slide", None)
        if isinstance(slide, api.SlideRef):
            return slide.path
        slides = getattr(request, "slides", None)
        # IndexRequest lists slide names; SaveClassifierRequest the marks of each slide (SlideMarks).
        names = [s if isinstance(s, str) else str(getattr(getattr(s, "slide", None), "path", "")) for s in slides or ()]
        return ",".join(names)[:200]


_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?!v1/)[^\s'\"`,;:()\[\]{}<>|*?]+")


def scrub_paths(text: str, roots: list[Any]) -> str:
    """``text`` with no absolute server path: a path under a root becomes its name relative to
    the root (as the listings show it), any other absolute path its last component. API paths
    (``/v1/...``) and URLs are left alone."""
    for root in sorted((str(r) for r in roots), key=len, reverse=True):
        text = text.replace(root + os.sep, "")
    return _ABSOLUTE.sub(lambda m: os.path.basename(m.group(0).rstrip("/")) or "/", text)
