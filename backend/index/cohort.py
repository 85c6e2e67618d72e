"""The cohort index: one directory with a FAISS index over tile embeddings and its metadata.

:class:`CohortIndex` is what is done with an open index: adding and removing slides, looking
at its contents, searching. Opening, creating, saving, rebuilding and recovering the
directory, with its layout and the rule that makes an interrupted run lose at most the slide
in progress, are :mod:`backend.index.directory`'s (the base class ``IndexDirectory``).

A search needs no pixels: the caller passes embedding vectors (a tile's, a text prompt's, or a
region's tiles) together with the id of the model that made them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from backend.api import ProgressCallback
from backend.errors import CancelledError
from backend.index import faiss_index as fi
from backend.index import query as q

# IndexClosedError: re-exported, its callers import it from here
from backend.index.directory import IndexClosedError, IndexDirectory, serialised  # noqa: F401
from backend.index.records import (
    AddResult,
    AddStatus,
    EmbeddingSet,
    Hit,
    IndexStats,
    RegionQueryMode,
    SlideRecord,
)


class CohortIndex(IndexDirectory):
    """A cohort's tile embeddings, searchable by a tile, a text prompt or a region.

    Get one with :meth:`create` or :meth:`open`, use it as a context manager (or call
    :meth:`close`), which saves the FAISS file. One writer process at a time (others may open
    it ``read_only``).

    Threads: every method may be called from any thread, and :meth:`close` from another
    thread than the one that opened the index. Calls on one index run one at a time, under
    one lock: a search first catches up with a live writer (it grows the FAISS index and the
    view), and FAISS does not allow a search while vectors are added; searches of different
    indexes run in parallel. The SQLite connection underneath is shared the same way (see
    :class:`~backend.index.store.MetaStore`).
    """

    # --- contents -----------------------------------------------------------------------

    @serialised
    def __len__(self) -> int:
        """Number of live vectors (tiles of slides in the index)."""
        return self._view.n_live

    @serialised
    def contains(self, fingerprint: str) -> bool:
        """True if a slide with this fingerprint is in the index."""
        return self._view.by_fingerprint(fingerprint) is not None

    @serialised
    def slides(self) -> list[SlideRecord]:
        """The slides in the index (live versions), in vector-id order."""
        return [s for s in self._view.slides if s.live]

    @serialised
    def slide_vectors(self, slide: SlideRecord) -> np.ndarray:
        """The ``(n_tiles, D)`` float32 tile vectors of one slide of :meth:`slides` (read from
        the metadata store, exact: for slide-to-slide comparison, not FAISS's approximation)."""
        self._check_open()
        return self._store.read_vectors(slide, self.dim)

    @serialised
    def spec_keys(self) -> set[str]:
        """The tile-spec keys of the slides in the index (see :mod:`backend.index.recorded`)."""
        return {s.spec_key for s in self.slides()}

    @serialised
    def stats(self) -> IndexStats:
        """Kind, sizes and generation of the index."""
        f = self._faiss_path()
        return IndexStats(
            kind=str(fi.kind_of(self._index)),
            n_live=self._view.n_live,
            n_dead=self._view.n_total - self._view.n_live,
            n_slides=len(self.slides()),
            generation=self._generation,
            file_bytes=f.stat().st_size if f.exists() else 0,
            model_id=self.model_id,
            dim=self.dim,
            nlist=fi.nlist_of(self._index),
            list_imbalance=fi.list_imbalance(self._index),
        )

    # --- adding -------------------------------------------------------------------------

    @serialised
    def add(
        self,
        emb: EmbeddingSet,
        slide_path: str | Path | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> AddResult:
        """Add one slide's embeddings; idempotent.

        A slide whose fingerprint is already in is skipped (also when it comes from another
        path: a copied or moved file keeps its first path). A slide at the path of a slide in
        the index but with another fingerprint (the file changed) replaces it. May trigger a
        rebuild (see :class:`IndexPolicy`), reported with ``progress`` and stoppable by
        ``cancel`` (the slide stays added; the rebuild is retried on the next add).

        Parameters
        ----------
        emb
            The slide's embeddings (see :class:`EmbeddingSet`).
        slide_path
            The slide file; defaults to ``emb.slide_path``.

        Returns
        -------
        AddResult

        Raises
        ------
        ModelMismatchError
            ``emb.model_id`` is not the index's model.
        InputError
            Missing path, or arrays of the wrong shape, dimension or values.
        """
        self._check_open(write=True)
        self._sync()
        slide = q.validate_embedding_set(emb, slide_path, self.model_id, self.dim, self.path)
        known = self._view.by_fingerprint(slide.fingerprint)
        if known is not None:
            return AddResult(AddStatus.SKIPPED, slide.fingerprint, known.slide_path)
        old = self._view.by_path(slide.slide_path)
        vectors = slide.vectors.astype(np.float16)  # what the store keeps, and FAISS sees
        with self._store.transaction() as db:
            if old is not None:
                self._store.retire(db, old.slide_id)
            record = self._store.insert_slide(
                db, fingerprint=slide.fingerprint, slide_name=slide.slide_name,
                slide_path=slide.slide_path, spec_key=slide.spec_key,
                tile_extent=slide.tile_extent, coords=slide.coords, vectors=vectors,
            )
            self._crash_point("metadata-written")
        self._crash_point("committed")
        fi.add(self._index, vectors.astype(np.float32))
        self._view = self._view.appended(record, slide.coords, retired=old)
        self._crash_point("faiss-added")
        self._append_rows(vectors, record.id_start)  # the float16 vectors file, in step with FAISS
        self._crash_point("rows-appended")
        self._unsaved += record.n_tiles
        # bounded catch-up work after a crash, without rewriting a large file every slide
        if self._unsaved >= max(self.policy.save_every, self._index.ntotal // 10):
            self.flush()
        try:
            rebuilt = self._maintain(progress, cancel)
        except CancelledError:  # the slide is in; the due rebuild happens on a later add
            rebuilt = False
        status = AddStatus.REPLACED if old is not None else AddStatus.ADDED
        return AddResult(status, slide.fingerprint, slide.slide_path, record.n_tiles,
                         old.fingerprint if old is not None else None, rebuilt)

    @serialised
    def remove(self, slide: str) -> bool:
        """Retire a slide (by fingerprint, path or name); False if it is not in the index."""
        self._check_open(write=True)
        self._sync()
        record = self._view.resolve(slide)
        if record is None:
            return False
        with self._store.transaction() as db:
            self._store.retire(db, record.slide_id)
        self._view = self._view.appended(None, None, retired=record)
        self._maintain(None, None)
        return True

    # --- searching ----------------------------------------------------------------------

    @serialised
    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        model_id: str,
        exclude_slides: Iterable[str] = (),
        only_slides: Iterable[str] | None = None,
        merge: bool = True,
        max_tiles: float = q.PLACE_MAX_TILES,
    ) -> list[Hit] | list[list[Hit]]:
        """Top-``k`` places most similar to a tile or text embedding.

        Parameters
        ----------
        query
            One ``(D,)`` vector, or ``(n, D)`` vectors searched independently.
        k
            Places (or tiles, without ``merge``) to return per query.
        model_id
            The model that made ``query``; must be the index's.
        exclude_slides, only_slides
            Slides (fingerprint, path or name) to leave out, or to search exclusively.
        merge
            Merge adjacent matching tiles of a slide into one place.
        max_tiles
            Most tiles a merged place spans across.

        Returns
        -------
        list of Hit, or one list per row for a 2-D ``query``
        """
        out = self.search_each(query, k, model_id=model_id, exclude_slides=exclude_slides,
                               only_slides=only_slides, merge=merge, max_tiles=max_tiles)
        return out[0] if np.ndim(query) == 1 else out

    @serialised
    def search_each(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        model_id: str,
        exclude_slides: Iterable[str] = (),
        only_slides: Iterable[str] | None = None,
        merge: bool = True,
        max_tiles: float = q.PLACE_MAX_TILES,
    ) -> list[list[Hit]]:
        """:meth:`search` with one list of hits per query row, always (a ``(D,)`` query is one
        row): the form for callers that need a single result type."""
        self._check_open()
        self._sync()
        q.check_k(k)
        rows, _ = q.check_queries(queries, model_id, self.model_id, self.dim, self.path)
        allowed = self._view.allowed(exclude_slides, only_slides)
        return [q.search_tiles(self._index, self._view, v, k, allowed, merge, self._knobs(), max_tiles)
                for v in rows]

    @serialised
    def search_region(
        self,
        tile_vectors: np.ndarray,
        k: int = 10,
        *,
        model_id: str,
        mode: RegionQueryMode | str = RegionQueryMode.TILESET,
        exclude_slides: Iterable[str] = (),
        only_slides: Iterable[str] | None = None,
        merge: bool = True,
        max_tiles: float = q.PLACE_MAX_TILES,
    ) -> list[Hit]:
        """Top-``k`` places most similar to a region given as its tiles' embeddings.

        Parameters
        ----------
        tile_vectors
            ``(M, D)`` embeddings of the region's tiles.
        mode
            ``tileset`` (default): every tile is a query and a place scores the mean, over
            the region's tiles, of its best similarity to them. ``pooled``: one query, the
            normalised mean of the tiles. See :class:`RegionQueryMode`.
        k, model_id, exclude_slides, only_slides, merge, max_tiles
            As in :meth:`search` (give ``max_tiles`` near the region's own size in tiles).
        """
        self._check_open()
        self._sync()
        q.check_k(k)
        tiles, _ = q.check_queries(tile_vectors, model_id, self.model_id, self.dim, self.path)
        mode = q.check_mode(mode)
        allowed = self._view.allowed(exclude_slides, only_slides)
        if mode is RegionQueryMode.POOLED or len(tiles) == 1:
            pooled = q.normalise(tiles.mean(axis=0, keepdims=True), "pooled region")[0]
            return q.search_tiles(self._index, self._view, pooled, k, allowed, merge, self._knobs(), max_tiles)
        return q.search_tileset(self._index, self._view, tiles, k, allowed, merge, self._knobs(), max_tiles)

    @serialised
    def searchable(self, exclude_slides: Iterable[str] = (), only_slides: Iterable[str] | None = None) -> int:
        """How many tiles a search with these filters can return (live tiles of the slides kept)."""
        self._check_open()
        self._sync()
        allowed = self._view.allowed(exclude_slides, only_slides)
        return self._view.n_live if allowed is None else int(np.count_nonzero(allowed))

    def shortfall(self, k: int, n_hits: int, exclude_slides: Iterable[str] = ()) -> str:
        """Why a search for ``k`` places returned ``n_hits`` ("" when ``k``): see
        :func:`backend.index.query.shortfall_note`."""
        return "" if n_hits >= k else q.shortfall_note(k, n_hits, self.searchable(exclude_slides))

    # --- internals ----------------------------------------------------------------------

    def _knobs(self) -> q.Knobs:
        # the exact stage: IVF only (flat is exact), and only when the file covers every label
        rows = self._rows
        if (rows is None or self.policy.rerank_factor == 0 or fi.kind_of(self._index) is fi.IndexKind.FLAT
                or len(rows) < self._index.ntotal):
            rows = None
        return q.Knobs(nprobe=self.policy.nprobe, k_factor=self.policy.k_factor,
                       rerank_factor=self.policy.rerank_factor, rows=rows)
