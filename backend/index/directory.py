"""The cohort index directory: its files, the write order and the recovery rule.

:class:`IndexDirectory` opens, creates, saves, rebuilds, recovers and closes one index
directory; :class:`~backend.index.cohort.CohortIndex` builds on it with what is done with an
open index (adding slides, searching).

Layout of an index directory::

    meta.sqlite          the source of truth (see ``store.py``): model id, dim, policy,
                         generation; per slide version its metadata, tile coordinates,
                         vector-id range and float16 vectors
    index-<gen>.faiss    the FAISS index of generation <gen>, a derived cache of the store
    vectors-<gen>.npy    the store's float16 vectors in FAISS label order, memory-mapped by
                         the exact re-ranking stage of an IVF search (``exact_rows.py``); kept
                         in step with the FAISS ids by the same rule (indexes made before it
                         have none until their next rebuild)
    lock                 held (flock) by the one process that has the index open for writing

Writes and the recovery rule
    Adding a slide (``CohortIndex.add``) is one SQLite transaction (retire the old version of
    a changed file, insert the slide's metadata, coordinates and vectors); only after the
    commit are the vectors added to the in-memory FAISS index, whose file is rewritten
    atomically (temp file + fsync + ``os.replace``) every ``policy.save_every`` vectors (or a
    tenth of the index, if more) and on close. So at any instant, a kill leaves the store with
    whole slides only (SQLite rolls back an open transaction), and the FAISS file of the
    current generation holds a *prefix* of the store's vector ids. On open:

    1. leftover ``*.tmp`` files and FAISS files of other generations are deleted;
    2. if ``index-<gen>.faiss`` is missing, unreadable, of another dimension, or holds *more*
       vectors than the store (it cannot be trusted), the FAISS index is rebuilt from the
       store;
    3. if it holds fewer vectors than the store, the missing tail (slides committed after the
       last save) is added from the store: ``ntotal == store.n_total()`` afterwards; the same
       for the vectors file (a missing tail is appended; a file that cannot be trusted is
       rewritten from the store, see ``exact_rows.py``);
    4. a slide whose add was interrupted before its commit is simply not in the index:
       ``contains()`` is False and adding it again (resuming) adds it.

    A rebuild (flat to IVF, retraining, compaction) writes ``index-<gen+1>.faiss`` first,
    then commits the renumbered store together with ``generation = gen+1``, then deletes the
    old file: a kill before the commit keeps generation ``gen`` and its file, after it the new.
    A rebuild that was due but never committed is done again by the next ``add``.

    A ``read_only`` open applies the same rule in memory only, and keeps up with a live
    writer: each search first adds the vectors the writer has committed since.

Removing vectors
    A changed slide's old vectors are not removed from FAISS at once: they are marked retired
    in the store and masked out of every search by an ``IDSelectorBitmap`` inside FAISS (so
    ``k`` live hits still come back). When retired vectors exceed
    ``policy.max_dead_fraction`` the index is compacted by a rebuild. Why not ``remove_ids``:
    the IVF index re-ranks through ``IndexRefine``, which does not implement it, and on flat or
    IVF lists it is an O(ntotal) rewrite per slide anyway; tombstones keep vector ids stable
    (FAISS label = position), which is what makes the prefix rule above possible.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import numpy as np

from backend.api import ProgressCallback
from backend.errors import InputError
from backend.index import build as b
from backend.index import exact_rows as er
from backend.index import faiss_index as fi
from backend.index import query as q
from backend.index.records import IndexPolicy, SlideRecord
from backend.index.store import DB_NAME, MetaStore, acquire_lock, release_lock

D = TypeVar("D", bound="IndexDirectory")
P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)


class IndexClosedError(InputError):
    """The index was closed (perhaps by another thread) before this call."""


def serialised(method: Callable[Concatenate[D, P], R]) -> Callable[Concatenate[D, P], R]:
    """Run ``method`` under the index's lock (see :class:`~backend.index.cohort.CohortIndex` on threads)."""

    @functools.wraps(method)
    def locked(self: D, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._mutex:
            return method(self, *args, **kwargs)

    return locked


class IndexDirectory:
    """One open cohort index directory, kept consistent by the rule in the module docstring.

    The base of :class:`~backend.index.cohort.CohortIndex` (use that): the store, the FAISS
    index of the current generation held in memory, the writer lock and the mutex that
    serialises calls (see ``CohortIndex`` on threads).
    """

    def __init__(self, path: Path, store: MetaStore, policy: IndexPolicy, lock: Any) -> None:
        # use create() or open(): they check the directory and run the recovery
        self.path = path
        self._store = store
        self.policy = policy
        self._lock = lock
        self.model_id: str = store.get_info("model_id") or ""
        # The name to load the model by; indexes made before it was recorded: the id, which
        # is the loadable name of registry and hub models.
        self.model_name: str = store.get_info("model_name") or self.model_id
        self.dim: int = int(store.get_info("dim") or 0)
        self._index: Any = None
        self._gen = store.generation  # generation of the FAISS index held in memory
        self._view = q.View.empty()
        self._unsaved = 0
        # the float16 vectors file (exact_rows), memory-mapped; kept by indexes that record it
        self._rows_kept = store.get_info(er.INFO_KEY) is not None
        self._rows: np.ndarray | None = None
        self._rows_refused = False  # a reader found the file untrustworthy (until reopened)
        self._closed = False
        self._mutex = threading.RLock()  # see the class docstring

    # --- lifecycle ----------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, model_id: str, dim: int, policy: IndexPolicy | None = None,
        model_name: str | None = None,
    ) -> Self:
        """Create an empty index in directory ``path`` (new, or existing and empty).

        Parameters
        ----------
        path
            Directory to hold the index.
        model_id
            The one model whose embeddings this index accepts.
        dim
            Embedding dimension of that model.
        policy
            Size thresholds and search knobs, stored with the index.
        model_name
            The name the model is loaded by (registry name, hub id, bundle path), recorded so
            that a search can load it without being told; default ``model_id``.
        """
        path = Path(path)
        if not model_id or dim < 2:
            raise InputError(f"cohort index needs a model id and a dimension >= 2, got {model_id!r}, {dim}")
        if (path / DB_NAME).exists():
            raise InputError(f"{path} already holds a cohort index: open it with CohortIndex.open")
        path.mkdir(parents=True, exist_ok=True)
        if any(p.name != "lock" for p in path.iterdir()):
            raise InputError(f"{path} is not empty: a cohort index needs a directory of its own")
        lock = acquire_lock(path)
        policy = policy or IndexPolicy()
        info = {"model_id": model_id, "dim": str(int(dim)), "policy": json.dumps(asdict(policy)),
                "trained_n": "0", "model_name": model_name or model_id, er.INFO_KEY: er.INFO_VALUE}
        try:
            store = MetaStore.create(path / DB_NAME, info)
        except BaseException:
            release_lock(lock)
            raise
        self = cls(path, store, policy, lock)
        self._index = fi.new_flat(self.dim)
        self.flush(force=True)
        er.write_rows(self._rows_path(), [], self.dim)
        self._rows = er.open_rows(self._rows_path())
        return self

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, policy: IndexPolicy | None = None
    ) -> Self:
        """Open an existing index, recovering from an interrupted run (see module docstring).

        Parameters
        ----------
        path
            The index directory.
        read_only
            Open without writing anything (recovery happens in memory only).
        policy
            Overrides the stored policy for this session.
        """
        path = Path(path)
        if not (path / DB_NAME).is_file():
            raise InputError(f"{path}: no cohort index here ({DB_NAME} not found)")
        lock = None if read_only else acquire_lock(path)
        try:
            store = MetaStore(path / DB_NAME, read_only=read_only)
        except BaseException:
            release_lock(lock)
            raise
        self = cls(path, store, policy or _stored_policy(store), lock)
        try:
            self._recover()
        except BaseException:
            self._store.close()
            release_lock(lock)
            raise
        return self

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike[str], *, model_id: str, dim: int, model_name: str | None = None
    ) -> Self:
        """Open the index at ``path`` for writing, creating it when absent; an existing index of
        another model is refused here, before any slide is embedded for it."""
        if not (Path(path) / DB_NAME).exists():
            return cls.create(path, model_id=model_id, dim=dim, model_name=model_name)
        index = cls.open(path)
        if index.model_id != model_id:
            from backend.models.identity import check_same_weights, is_legacy, same_model_other_weights

            index.close()
            if is_legacy(index.model_id) or same_model_other_weights(index.model_id, model_id):
                # the same model name, but not provably the same weights
                fix = "Build a new index for these weights: choose another --out (or delete this index folder)"
            else:
                fix = f"Index with --model {index.model_name}, or choose another --out"
            check_same_weights(f"cohort index {path}", index.model_id, model_id, fix,
                               loaded_by=f"model {model_name!r}" if model_name else None)
        return index

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @serialised
    def close(self) -> None:
        """Save the FAISS file (unless read-only), close the store, release the lock."""
        if self._closed:
            return
        try:
            if self._lock is not None:
                self._sync()
                self.flush()
        finally:
            self._closed = True
            self._rows = None
            self._store.close()
            release_lock(self._lock)

    @serialised
    def flush(self, *, force: bool = False) -> None:
        """Write the FAISS file of the current generation if vectors were added since."""
        self._check_open(write=True)
        if self._unsaved or force or not self._faiss_path().exists():
            fi.save_atomic(self._index, self._faiss_path())
            self._unsaved = 0

    # --- rebuilding ---------------------------------------------------------------------

    @serialised
    def rebuild(
        self,
        kind: fi.IndexKind | str | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Rebuild the FAISS index from the store: drop retired vectors, (re)train if IVF.

        Parameters
        ----------
        kind
            ``flat`` or ``ivf``; by default chosen from the live count and the policy.
        progress
            Called with ``Progress(slides done, slides total, "rebuild <kind>")``.
        cancel
            Set it to stop; the index is left as it was and :class:`CancelledError` raised.
        """
        self._check_open(write=True)
        live = [s for s in self._store.slides(live_only=True)]
        n_live = sum(s.n_tiles for s in live)
        kind = fi.IndexKind(kind) if kind is not None else b.kind_for(n_live, self.policy)
        index = b.build_index(self._store, live, self.dim, kind, self.policy, progress, cancel)
        generation = self._generation + 1
        fi.save_atomic(index, self._faiss_path(generation))
        # the vectors file of the new numbering (live slides in id order, as build_index added)
        self._write_rows(generation, live)
        self._crash_point("rebuild-saved")
        with self._store.transaction() as db:
            self._store.compact(db, generation)
            self._store.set_info(db, "trained_n", str(n_live))
            self._store.set_info(db, er.INFO_KEY, er.INFO_VALUE)
        self._gen = generation
        self._crash_point("rebuild-committed")
        self._faiss_path(generation - 1).unlink(missing_ok=True)
        self._rows = None  # unmap before unlinking (Windows refuses to delete a mapped file)
        er.rows_path(self.path, generation - 1).unlink(missing_ok=True)
        self._index, self._unsaved = index, 0
        self._view = q.View.load(self._store)
        self._rows_kept, self._rows = True, er.open_rows(self._rows_path())

    # --- internals ----------------------------------------------------------------------

    @property
    def _generation(self) -> int:
        return self._gen

    def _faiss_path(self, generation: int | None = None) -> Path:
        gen = self._generation if generation is None else generation
        return self.path / f"index-{gen}.faiss"

    def _rows_path(self, generation: int | None = None) -> Path:
        return er.rows_path(self.path, self._generation if generation is None else generation)

    def _crash_point(self, stage: str) -> None:
        """A seam for crash tests: raise or kill here to simulate dying at ``stage``."""

    def _check_open(self, *, write: bool = False) -> None:
        if self._closed:
            raise IndexClosedError(f"cohort index {self.path} is closed")
        if write and self._lock is None:
            raise InputError(f"cohort index {self.path} is open read-only")

    def _recover(self) -> None:
        """Load the FAISS file and bring it level with the store (module docstring rule)."""
        self._gen = self._store.generation
        self._index, self._unsaved = None, 0
        self._rows_kept, self._rows = self._store.get_info(er.INFO_KEY) is not None, None
        self._rows_refused = False
        current = self._faiss_path()
        if self._lock is not None:  # only a writer may tidy up
            for p in self.path.iterdir():
                stray = (p.name.endswith(".tmp") or (p.suffix == ".faiss" and p != current)
                         or (er.is_rows_file(p) and p != self._rows_path())
                         or p.name.startswith(".vectors-"))  # a killed write's temp (backend.atomic)
                if stray and p.is_file():
                    p.unlink()
        self._view = q.View.load(self._store)
        index = None
        if current.exists():
            try:
                index = fi.load(current)
            except InputError:
                index = None  # a damaged derived file: rebuilt below
        if index is None or index.d != self.dim or index.ntotal > self._view.n_total:
            if self._lock is None:  # read-only: an in-memory copy with the store's numbering
                self._index = b.build_index(self._store, self._view.slides, self.dim,
                                             b.kind_for(self._view.n_live, self.policy), self.policy)
                self._sync_rows(verify=True)
                return
            self.rebuild()
            return
        self._index = index
        self._sync_rows(verify=True)  # checked before any tail is appended to it
        self._sync()

    def _sync(self) -> None:
        """Add vectors the store has and FAISS lacks (after a crash or a failed add)."""
        if self._gen != self._store.generation:  # a rebuild failed between commit and swap
            self._recover()
            return
        if self._index.ntotal == self._store.n_total() == self._view.n_total:
            self._sync_rows()
            return
        self._view = q.View.load(self._store)
        have = self._index.ntotal
        if have > self._view.n_total:
            raise InputError(
                f"{self.path}: FAISS index holds {have} vectors but the store {self._view.n_total}; "
                "reopen the index to rebuild it"
            )
        for s in self._view.slides:
            if s.id_start + s.n_tiles > have:
                vectors = self._store.read_vectors(s, self.dim)
                fi.add(self._index, vectors[max(0, have - s.id_start):])
                self._unsaved += s.n_tiles
                have = self._index.ntotal
        self._sync_rows()

    # --- the float16 vectors file (exact_rows) ------------------------------------------

    def _write_rows(self, generation: int, slides: list[SlideRecord] | tuple[SlideRecord, ...]) -> None:
        """Write the vectors file of ``generation`` whole from the store: ``slides`` in id order."""
        er.write_rows(self._rows_path(generation), (self._store.read_vectors(s, self.dim) for s in slides),
                      self.dim)

    def _append_rows(self, vectors: np.ndarray, start: int) -> None:
        """Append one added slide's rows; a failure is logged and repaired by the next sync."""
        if not self._rows_kept:
            return
        try:
            er.append_rows(self._rows_path(), vectors, start, self.dim)
            self._rows = er.open_rows(self._rows_path())
        except (InputError, OSError) as e:
            log.warning("cohort index %s: %s; the vectors file is repaired on the next call", self.path, e)
            self._rows = None

    def _sync_rows(self, *, verify: bool = False) -> None:
        """Bring the vectors file level with the FAISS index (rule in ``exact_rows.py``).

        A writer appends a missing tail from the store and rewrites a file it cannot trust;
        a reader maps what the writer has committed, or searches without the exact stage
        (one warning) if the file cannot be trusted, until it is reopened. ``verify``: also compare the rows of
        the last slide the file holds with the store's (on open).
        """
        n = self._view.n_total  # the store's vector ids, which FAISS holds after a sync
        if (not self._rows_kept or self._rows_refused
                or (self._rows is not None and len(self._rows) == n and not verify)):
            return
        path = self._rows_path()
        try:
            have = er.check_rows(path, self.dim)
            if have > n:
                raise InputError(f"{path}: holds {have} rows, the store {n} (rows of another state)")
            if verify:
                self._verify_rows(path, have)
        except InputError as e:
            if self._lock is None:
                log.warning("%s; searching without the exact re-ranking stage", e)
                self._rows, self._rows_refused = None, True
                return
            log.warning("%s; rewriting it from the store", e)
            self._rows = None
            self._write_rows(self._generation, self._view.slides)
            have = n
        if have < n and self._lock is not None:  # committed slides not yet in the file
            for s in self._view.slides:
                if s.id_start + s.n_tiles > have:
                    tail = self._store.read_vectors(s, self.dim)[max(0, have - s.id_start):]
                    have = er.append_rows(path, tail, have, self.dim)
        self._rows = er.open_rows(path)

    def _verify_rows(self, path: Path, have: int) -> None:
        """Raise :class:`InputError` if the file's rows of the last slide it holds are not the
        store's (a file of another index or generation put in place)."""
        held = [s for s in self._view.slides if s.n_tiles and s.id_start < have]
        if not held:
            return
        s = held[-1]
        stored = self._store.read_vectors(s, self.dim)[: have - s.id_start].astype(np.float16)
        if not np.array_equal(er.open_rows(path)[s.id_start : min(have, s.id_start + s.n_tiles)], stored):
            raise InputError(f"{path}: rows {s.id_start}.. differ from the store's vectors of slide "
                             f"{s.slide_name!r} (not this index's file)")

    def _maintain(self, progress: ProgressCallback | None, cancel: threading.Event | None) -> bool:
        """Rebuild when the policy says so; True if it did."""
        trained = int(self._store.get_info("trained_n") or 0)
        due = b.rebuild_due(fi.kind_of(self._index), self._view.n_live, self._view.n_total, trained, self.policy)
        if due:
            self.rebuild(progress=progress, cancel=cancel)
        return due


def _stored_policy(store: MetaStore) -> IndexPolicy:
    """The policy saved at creation (fields this version does not know are ignored)."""
    known = {f.name for f in fields(IndexPolicy)}
    return IndexPolicy(**{k: v for k, v in store.policy_json().items() if k in known})
