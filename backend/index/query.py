"""Searching the cohort index: input checks, the in-memory view of its metadata, and the two
search strategies (tile/pooled queries and tile-set region queries).

``directory.py`` owns the index's life cycle (files, recovery) and ``cohort.py`` adding; this
module holds what a search needs and nothing that writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError
from backend.index import faiss_index as fi
from backend.index.merge import (
    PLACE_MAX_TILES,
    SUPPORT_MARGIN,
    Place,
    best_regions,
    bounding_box,
    group_adjacent,
    group_indices,
    relative_margin,
    singletons,
    tile_box,
)
from backend.index.records import EmbeddingSet, Hit, RegionQueryMode, SlideRecord
from backend.index.store import MetaStore

#: Most tiles fetched for one query while looking for ``k`` distinct places.
MAX_FETCH = 8192
#: A region query uses at most this many of its tiles (evenly spread), bounding its cost.
MAX_QUERY_TILES = 256
#: ... and fetches at most this many tiles in all (query tiles x tiles fetched for each).
MAX_CANDIDATES = 65_536
#: Fewest PQ candidates a fetched tile gets when a place search fetches beyond ``k * k_factor``
#: (see :func:`fetch_k_factor`).
MIN_FETCH_FACTOR = 4
#: Tiles sampled (evenly over the searchable ones) to learn a query's typical score, which
#: sets the merge margin (``merge.relative_margin``).
TYPICAL_SAMPLE = 1024


@dataclass(frozen=True)
class Knobs:
    """How an IVF index is searched: overrides (None: the values stored in the index) and the
    float16 vectors of the exact re-ranking stage (None: no such stage; see ``exact_rows``)."""

    nprobe: int | None = None
    k_factor: int | None = None
    rerank_factor: int | None = None
    rows: np.ndarray | None = None


@dataclass(frozen=True)
class ValidSlide:
    """An :class:`EmbeddingSet` after checking: normalised vectors, resolved path."""

    fingerprint: str
    slide_name: str
    slide_path: str
    spec_key: str
    tile_extent: float
    coords: np.ndarray
    vectors: np.ndarray


# --- input checks -----------------------------------------------------------------------


def normalise(x: np.ndarray, what: str) -> np.ndarray:
    """Rows of ``x`` scaled to unit length; a zero or non-finite row is an :class:`InputError`."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise InputError(f"{what}: row {int(np.flatnonzero(bad)[0])} is zero or not finite")
    return np.ascontiguousarray(x / norms)


def _check_model(what: str, theirs: str, ours: str, index_path: Path) -> None:
    """The one weights-identity check (:func:`backend.models.identity.check_same_weights`):
    ``what`` (made with ``theirs``) against the index (made with ``ours``)."""
    from backend.models.identity import check_same_weights, describe

    check_same_weights(
        f"cohort index {index_path}", ours, theirs,
        f"Embed with the index's model, or rebuild the index with {describe(theirs)}", loaded_by=what,
    )


def validate_embedding_set(
    emb: EmbeddingSet, slide_path: str | Path | None, model_id: str, dim: int, index_path: Path
) -> ValidSlide:
    """Check one slide's embeddings against the index; raise naming the slide and field."""
    name = str(getattr(emb, "slide_name", "") or getattr(emb, "slide_fingerprint", "?"))
    _check_model(f"the model of the embeddings of slide {name!r}", str(emb.model_id), model_id, index_path)
    path = slide_path if slide_path is not None else getattr(emb, "slide_path", None)
    if not path:
        raise InputError(f"slide {name!r}: no slide_path on the embeddings and none given to add()")
    fingerprint = str(emb.slide_fingerprint or "")
    if not fingerprint:
        raise InputError(f"slide {name!r}: empty slide_fingerprint")
    vectors = np.asarray(emb.vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"slide {name!r}: vectors have shape {vectors.shape}, expected (N, {dim})")
    coords = np.asarray(emb.coords)
    if coords.shape != (len(vectors), 2):
        raise InputError(f"slide {name!r}: coords have shape {coords.shape}, expected ({len(vectors)}, 2)")
    extent = float(emb.tile_extent)
    if not np.isfinite(extent) or extent <= 0:
        raise InputError(f"slide {name!r}: tile_extent {emb.tile_extent!r} is not a positive size")
    vectors = normalise(vectors, f"slide {name!r} vectors") if len(vectors) else vectors.astype(np.float32)
    return ValidSlide(
        fingerprint=fingerprint,
        slide_name=name,
        slide_path=str(Path(path).expanduser().resolve()),
        spec_key=str(emb.spec_key),
        tile_extent=extent,
        coords=coords.astype(np.int64),
        vectors=vectors,
    )


def check_queries(
    query: np.ndarray, model_id: str, index_model: str, dim: int, index_path: Path
) -> tuple[np.ndarray, bool]:
    """Query rows as unit float32 ``(n, dim)`` and whether a single 1-D vector was given."""
    _check_model("the model of the query embeddings", str(model_id), index_model, index_path)
    arr = np.asarray(query, dtype=np.float32)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.ndim != 2 or arr.shape[1] != dim or len(arr) == 0:
        raise InputError(f"query has shape {np.shape(query)}, expected ({dim},) or (n, {dim})")
    return normalise(arr, "query"), single


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k={k!r}: the number of hits wanted must be an integer >= 1")


def check_mode(mode: RegionQueryMode | str) -> RegionQueryMode:
    try:
        return RegionQueryMode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in RegionQueryMode)
        raise InputError(f"region query mode {mode!r} is not one of: {choices}") from None


# --- the in-memory view of the metadata ---------------------------------------------------


class View:
    """The slides of the current generation, their tile coordinates, and lookups.

    Immutable once built: an add makes a new view (:meth:`appended`), so a search never sees
    a half-updated one.
    """

    def __init__(self, slides: Sequence[SlideRecord], coords: Sequence[np.ndarray]) -> None:
        self.slides = tuple(slides)
        self.coords = tuple(coords)
        self.n_total = sum(s.n_tiles for s in self.slides)
        self.n_live = sum(s.n_tiles for s in self.slides if s.live)
        nonempty = [i for i, s in enumerate(self.slides) if s.n_tiles]
        self._nonempty = np.array(nonempty, dtype=np.int64)
        self._starts = np.array([self.slides[i].id_start for i in nonempty], dtype=np.int64)
        live = [s for s in self.slides if s.live]
        self._fingerprint = {s.fingerprint: s for s in live}
        self._path = {s.slide_path: s for s in live}
        self._names: dict[str, list[SlideRecord]] = {}
        for s in live:
            self._names.setdefault(s.slide_name, []).append(s)
        self._index_of = {s.slide_id: i for i, s in enumerate(self.slides)}
        self._live_mask: np.ndarray | None = None
        self._typical: tuple[tuple, np.ndarray] | None = None  # see typical_sample

    @classmethod
    def empty(cls) -> View:
        return cls((), ())

    @classmethod
    def load(cls, store: MetaStore) -> View:
        slides = store.slides(live_only=False)
        return cls(slides, [store.read_coords(s) for s in slides])

    def appended(self, record: SlideRecord | None, coords: np.ndarray | None, *, retired: SlideRecord | None) -> View:
        """A new view with ``record`` added and ``retired`` marked not live."""
        slides = [dataclasses.replace(s, live=False) if retired is not None and s.slide_id == retired.slide_id else s
                  for s in self.slides]
        all_coords = list(self.coords)
        if record is not None:
            slides.append(record)
            all_coords.append(np.asarray(coords, dtype=np.int64))
        return View(slides, all_coords)

    def by_fingerprint(self, fingerprint: str) -> SlideRecord | None:
        return self._fingerprint.get(fingerprint)

    def by_path(self, slide_path: str) -> SlideRecord | None:
        return self._path.get(slide_path)

    def resolve(self, ident: str | Path) -> SlideRecord | None:
        """A live slide by fingerprint, path or (unambiguous) name."""
        ident = str(ident)
        found = self._fingerprint.get(ident) or self._path.get(ident)
        if found is None:
            try:
                found = self._path.get(str(Path(ident).expanduser().resolve()))
            except (OSError, RuntimeError):
                found = None
        if found is None and ident in self._names:
            named = self._names[ident]
            if len(named) > 1:
                raise InputError(f"slide name {ident!r} is ambiguous ({len(named)} slides): give a path or fingerprint")
            found = named[0]
        return found

    def _range(self, s: SlideRecord) -> slice:
        return slice(s.id_start, s.id_start + s.n_tiles)

    def allowed(self, exclude: Iterable[str], only: Iterable[str] | None) -> np.ndarray | None:
        """Mask of searchable vector ids, or None when every id is (no retired, no filter)."""
        excluded = [s for s in (self.resolve(x) for x in exclude) if s is not None]
        if only is None and not excluded and self.n_live == self.n_total:
            return None
        if only is None:
            if self._live_mask is None:
                mask = np.zeros(self.n_total, dtype=bool)
                for s in self.slides:
                    if s.live:
                        mask[self._range(s)] = True
                self._live_mask = mask
            mask = self._live_mask.copy()
        else:
            mask = np.zeros(self.n_total, dtype=bool)
            for ident in only:
                record = self.resolve(ident)
                if record is None:
                    raise InputError(f"only_slides: {ident!r} is not a slide of this cohort index "
                                     "(give a fingerprint, path or name from CohortIndex.slides())")
                mask[self._range(record)] = True
        for s in excluded:
            mask[self._range(s)] = False
        return mask

    def locate(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slide index (into :attr:`slides`), level-0 ``xy`` and tile extent of each label."""
        labels = np.asarray(labels, dtype=np.int64)
        sidx = self._nonempty[np.searchsorted(self._starts, labels, side="right") - 1]
        xy = np.empty((len(labels), 2), dtype=np.int64)
        for rows in group_indices(sidx):
            u = int(sidx[rows[0]])
            xy[rows] = self.coords[u][labels[rows] - self.slides[u].id_start]
        extent = np.array([self.slides[i].tile_extent for i in sidx], dtype=np.float64)
        return sidx, xy, extent

    def hit(self, region: Place, sidx: np.ndarray, xy: np.ndarray, extent: np.ndarray, score: float) -> Hit:
        s = self.slides[int(sidx[region.best])]
        b = region.best
        return Hit(
            slide_name=s.slide_name,
            slide_path=s.slide_path,
            fingerprint=s.fingerprint,
            box=region.box,
            score=float(score),
            n_tiles=len(region.members),
            best_tile=tile_box(xy[b, 0], xy[b, 1], extent[b]),
            spec_key=s.spec_key,
        )


# --- searching ----------------------------------------------------------------------------


def _n_allowed(view: View, allowed: np.ndarray | None) -> int:
    return view.n_live if allowed is None else int(np.count_nonzero(allowed))


def typical_sample(index: Any, view: View, allowed: np.ndarray | None) -> np.ndarray:
    """Up to ``TYPICAL_SAMPLE`` searchable tiles spread evenly over the index, as unit rows.

    Kept on the (immutable) view for the last filter used: decoding them costs tens of
    milliseconds a query at 1536 dimensions (most of a place search; BENCHMARKS.md), and
    successive queries mostly share their filter (none, or the query's own slide left out).
    """
    mask_key = b"" if allowed is None else hashlib.blake2b(np.packbits(allowed).tobytes(), digest_size=16).digest()
    key = (id(index), int(index.ntotal), allowed is None, mask_key)
    if view._typical is not None and view._typical[0] == key:
        return view._typical[1]
    ids = np.arange(view.n_total) if allowed is None else np.flatnonzero(allowed)
    if len(ids):
        ids = ids[np.unique(np.linspace(0, len(ids) - 1, min(len(ids), TYPICAL_SAMPLE)).round().astype(np.int64))]
        sample = normalise(fi.reconstruct(index, ids), "stored vectors")
    else:
        sample = np.zeros((0, int(index.d)), np.float32)
    view._typical = (key, sample)
    return sample


def typical_score(index: Any, view: View, allowed: np.ndarray | None, queries: np.ndarray) -> float:
    """Median, over up to ``TYPICAL_SAMPLE`` searchable tiles spread evenly over the index,
    of their best cosine with the query rows: what an ordinary tile scores."""
    sample = typical_sample(index, view, allowed)
    if len(sample) == 0:
        return 0.0
    queries = np.atleast_2d(queries)
    if len(queries) == 1:  # one vector: no BLAS threads (fi.inner_products)
        return float(np.median(fi.inner_products(sample, queries[0])))
    return float(np.median((sample @ queries.T).max(axis=1)))


def fetch_k_factor(index: Any, knobs: Knobs, k: int, fetch: int) -> int | None:
    """The ``k_factor`` for fetching ``fetch`` tiles on the way to ``k`` places or hits.

    An IVF index's ``k_factor`` sizes the PQ candidate pool that gives the top ``k`` their
    recall: ``k * k_factor`` candidates. A place search fetches more tiles than it returns
    (to merge neighbours and to fill ``k`` places), and those extra tiles need no pool of their
    own: the pool stays ``k * k_factor``, with at least :data:`MIN_FETCH_FACTOR` candidates a
    fetched tile when a fetch outgrows it. At 1M x 1536 a 40-tile fetch with the full factor
    made 2,560 candidates, twice the cost of the search itself (BENCHMARKS.md).
    """
    if fi.kind_of(index) is fi.IndexKind.FLAT or fetch <= k:
        return knobs.k_factor
    pool = k * float(knobs.k_factor or index.k_factor)
    return max(MIN_FETCH_FACTOR, math.ceil(pool / fetch))


def search_tiles(
    index: Any, view: View, vector: np.ndarray, k: int, allowed: np.ndarray | None, merge: bool, knobs: Knobs,
    max_tiles: float = PLACE_MAX_TILES,
) -> list[Hit]:
    """Top-``k`` places for one query vector (a tile, a text prompt or a pooled region).

    With ``merge``, tiles are fetched in growing batches (4k, 16k, ... up to ``MAX_FETCH``)
    until they form ``k`` distinct places (each at most ``max_tiles`` tiles across); a place
    scores its best tile.
    """
    n_allowed = _n_allowed(view, allowed)
    if n_allowed == 0:
        return []
    fetch = min(n_allowed, max(4 * k, 32)) if merge else min(n_allowed, k)
    typical = typical_score(index, view, allowed, vector) if merge else 0.0
    while True:
        scores, labels = fi.search(index, vector[None, :], fetch, allowed=allowed,
                                   nprobe=knobs.nprobe, k_factor=fetch_k_factor(index, knobs, k, fetch),
                                   rows=knobs.rows, rerank_factor=knobs.rerank_factor)
        ok = labels[0] >= 0
        s, lab = scores[0][ok], labels[0][ok]
        sidx, xy, extent = view.locate(lab)
        if not merge:
            regions = singletons(k, xy, extent, s)
            break
        places = group_adjacent(sidx, xy, extent, s, relative_margin(s, typical), max_tiles)
        if len(s) == 0 or places.max() + 1 >= k or fetch >= min(n_allowed, MAX_FETCH):
            regions = best_regions(places, xy, extent, s, s, limit=k)
            break
        fetch = min(n_allowed, MAX_FETCH, fetch * 4)
    return [view.hit(r, sidx, xy, extent, s[r.best]) for r in regions]


def search_tileset(
    index: Any, view: View, tiles: np.ndarray, k: int, allowed: np.ndarray | None, merge: bool, knobs: Knobs,
    max_tiles: float = PLACE_MAX_TILES,
) -> list[Hit]:
    """Top-``k`` places for a region given as a set of tile vectors.

    Every query tile fetches its nearest tiles; the union is merged into places, and a place
    scores ``mean over query tiles of (max over its tiles of the cosine)``: how well it
    covers *all* of the region, so a place matching one tissue of a mixed region ranks below
    one matching the mixture. A place's box and ``n_tiles`` are those of its tiles that match
    some query tile within ``SUPPORT_MARGIN`` of that tile's best match in the place; a
    place spans at most ``max_tiles`` tiles across.
    """
    n_allowed = _n_allowed(view, allowed)
    if n_allowed == 0:
        return []
    if len(tiles) > MAX_QUERY_TILES:
        tiles = tiles[np.linspace(0, len(tiles) - 1, MAX_QUERY_TILES).round().astype(int)]
    per = min(n_allowed, max(2 * k, 16))
    per_max = min(n_allowed, max(per, MAX_CANDIDATES // len(tiles)))
    typical = typical_score(index, view, allowed, tiles) if merge else 0.0
    while True:
        _, labels = fi.search(index, tiles, per, allowed=allowed, nprobe=knobs.nprobe,
                              k_factor=fetch_k_factor(index, knobs, k, per),
                              rows=knobs.rows, rerank_factor=knobs.rerank_factor)
        cand = np.unique(labels[labels >= 0])
        # float16 or SQ6-decoded vectors: renormalise so that scores are cosines again
        stored = normalise(fi.reconstruct(index, cand, knobs.rows), "stored vectors")
        sim = np.clip(tiles @ stored.T, -1.0, 1.0)  # (query tiles, candidates)
        sidx, xy, extent = view.locate(cand)
        best_sim = sim.max(axis=0)
        places = (group_adjacent(sidx, xy, extent, best_sim, relative_margin(best_sim, typical), max_tiles)
                  if merge else np.arange(len(cand)))
        n_places = int(places.max()) + 1 if len(cand) else 0
        if n_places >= k or per >= per_max:
            break
        per = min(per_max, per * 4)
    if n_places == 0:
        return []
    # place score, for all places at once: per query tile its best match in the place
    order = np.argsort(places, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(places[order]) != 0])
    best_in_place = np.maximum.reduceat(sim[:, order], starts, axis=1)  # (query tiles, places)
    place_score = best_in_place.mean(axis=0)
    mean_sim = sim.mean(axis=0)
    hits = []
    for r in best_regions(places, xy, extent, mean_sim, place_score, limit=k):
        per_query = sim[:, r.members]
        # the place is where the query's tiles are matched: tiles (nearly) as good as some
        # query tile's best match here, not the merely similar tissue merged around them
        near_best = per_query >= per_query.max(axis=1, keepdims=True) - SUPPORT_MARGIN
        support = r.members[np.any(near_best, axis=0)]
        best = int(support[np.argmax(mean_sim[support])])  # the most representative tile
        place = Place(members=support, best=best, box=bounding_box(xy[support], extent[support]))
        hits.append(view.hit(place, sidx, xy, extent, float(place_score[places[r.best]])))
    return hits


def shortfall_note(k: int, n_hits: int, n_searchable: int, merge: bool = True) -> str:
    """Why a search returned fewer than ``k`` places ("" when it returned ``k``).

    Parameters
    ----------
    k
        Places asked for.
    n_hits
        Places returned.
    n_searchable
        Tiles the search could return (live tiles, less the excluded slides).
    merge
        Whether touching matching tiles were merged into places.
    """
    if n_hits >= k:
        return ""
    if n_searchable == 0:
        return f"{n_hits} of {k} hits: the index holds no tiles to search (the query's own slide is left out)"
    if n_searchable <= k or not merge:
        return (f"{n_hits} of {k} hits: the index holds only {n_searchable} searchable tile(s) "
                "(the query's own slide is left out)")
    looked = (f"the {MAX_FETCH} nearest tiles" if n_searchable > MAX_FETCH
              else f"the index's {n_searchable} searchable tiles")
    return (f"{n_hits} of {k} hits: {looked} form only {n_hits} separate places "
            "(touching tiles that match alike are one place)")
