"""Repeated region requests on an already-cached slide, without opening the slide again.

A region request (a caption, a region zero-shot, a region search) on a cached slide needs
the tiles under the region and nothing else. The full path opens the slide (OpenSlide: tens
of ms), computes its content fingerprint (~3 MiB read) to find the store, and reads the
whole slide's vectors from it. :class:`RegionReads` remembers, per engine cache:

- which store a slide file maps to, keyed by the file's *identity*
  (:func:`backend.slides.fingerprint.slide_identity`: path, size, mtime in ns and inode of
  the file and its companions, from ``stat`` alone) with the model id, the tile spec, the
  user's mpp and the tissue switch: everything the store's key is computed from. A file
  replaced or rewritten in place gets a new identity, so it is opened and fingerprinted
  again: a stale entry is never used, only left to age out.
- each finished store's tile coordinates and its open ``vectors`` array, keyed by the store's
  path and checked against the ``stat`` of its ``zarr.json`` (a store removed and rebuilt is
  opened again), so a request reads only the zarr chunks holding the region's rows.

Anything unexpected on this path (a store removed under it, a damaged chunk) drops the
entries and answers None, so the caller takes the full path, which owns the error handling
and the removal of damaged stores. The memo belongs to an :class:`EmbeddingCache` (the
object a backend holds) and is safe to use from any thread.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from backend.embed.cache import CacheKey, EmbeddingCache
    from backend.embed.types import SlideEmbeddings
    from backend.geometry import RegionLike
    from backend.slides.tiling import TileSpec

# (slide identity, mpp given, model id, tile spec key, use_tissue)
_SlideSig = tuple[str, float | None, str, str, bool]


@dataclass(frozen=True)
class _Resolved:
    """What opening a slide file taught: its store's key and how the slide is named."""

    key: CacheKey
    slide_name: str
    slide_path: str


@dataclass(frozen=True)
class _Store:
    """A finished store held open: its ``zarr.json`` stamp, attributes and small arrays."""

    stamp: tuple[int, int, int]
    attrs: dict[str, Any]
    coords: np.ndarray
    grid_index: np.ndarray
    vectors: Any  # the zarr array, read by rows


def slide_signature(path: str | os.PathLike[str], mpp: float | None, model_id: str, spec: TileSpec,
                    use_tissue: bool) -> _SlideSig:
    """The memo key of a slide file as it is now, for one model and tile spec (``stat`` only)."""
    from backend.slides.fingerprint import slide_identity

    return (slide_identity(os.fspath(path)), None if mpp is None else float(mpp), model_id, str(spec.key()), bool(use_tissue))


def _stamp(path: Path) -> tuple[int, int, int]:
    st = (path / "zarr.json").stat()
    return (st.st_mtime_ns, st.st_ino, st.st_size)


class RegionReads:
    """Memo of slide files' store keys and of open stores, for reading a region's rows only.

    Parameters
    ----------
    max_entries
        Slides (and stores) remembered; the least recently used are forgotten first.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._max = int(max_entries)
        self._lock = threading.Lock()
        self._slides: OrderedDict[_SlideSig, _Resolved] = OrderedDict()
        self._stores: OrderedDict[Path, _Store] = OrderedDict()

    def remember(self, sig: _SlideSig, key: CacheKey, slide_name: str, slide_path: str) -> None:
        """Record that the slide file of ``sig`` (taken before it was opened) has store ``key``."""
        with self._lock:
            self._slides[sig] = _Resolved(key, slide_name, slide_path)
            self._slides.move_to_end(sig)
            while len(self._slides) > self._max:
                self._slides.popitem(last=False)

    def forget(self) -> None:
        """Drop every entry (the next requests take the full path)."""
        with self._lock:
            self._slides.clear()
            self._stores.clear()

    def read(self, cache: EmbeddingCache, sig: _SlideSig, region: RegionLike) -> SlideEmbeddings | None:
        """The tiles of the remembered slide ``sig`` under ``region``, or None.

        None when the slide file is not remembered in this state, its store is not finished,
        or anything on the way fails (the caller then takes the full path).
        """
        with self._lock:
            resolved = self._slides.get(sig)
            if resolved is not None:
                self._slides.move_to_end(sig)
        if resolved is None:
            return None
        from backend.embed.cache import EmbeddingCacheError, _DamagedStore

        try:
            return self._read(cache, resolved, region)
        except (OSError, ValueError, LookupError, RuntimeError, EmbeddingCacheError, _DamagedStore):
            # the store changed or broke underneath (removed, rewritten, a bad chunk: zarr's
            # errors are ValueErrors, OSErrors or LookupErrors, numcodecs' decode errors
            # RuntimeErrors): the full path repeats the read and reports or repairs it. Anything
            # else is a fault of this code and propagates (a blind ``except`` here once hid an
            # ImportError as a silent full read per call).
            self.forget()
            return None

    def _read(self, cache: EmbeddingCache, resolved: _Resolved, region: RegionLike) -> SlideEmbeddings | None:
        from backend.embed.cache import embeddings_of
        from backend.geometry import tiles_in_region

        path = cache.final_path(resolved.key)
        store = self._store(path, resolved.key)
        if store is None:
            return None
        rows = tiles_in_region(store.coords, float(store.attrs["tile_extent"]), region)
        dim = int(store.vectors.shape[1])
        if len(rows):
            vectors = np.asarray(store.vectors.get_orthogonal_selection((rows, slice(None))), dtype=np.float32)
        else:
            vectors = np.zeros((0, dim), np.float32)
        if vectors.shape != (len(rows), dim) or not np.isfinite(vectors).all():
            return None  # the full path's load finds and removes the damaged store
        return embeddings_of(
            resolved.key, store.attrs, slide_name=resolved.slide_name, slide_path=resolved.slide_path,
            coords=store.coords[rows], grid_index=store.grid_index[rows], vectors=vectors,
        )

    def _store(self, path: Path, key: CacheKey) -> _Store | None:
        from backend.embed.cache import open_checked

        try:
            stamp = _stamp(path)
        except FileNotFoundError:
            return None
        with self._lock:
            store = self._stores.get(path)
        if store is not None and store.stamp == stamp:
            return store
        group, attrs = open_checked(path, key)
        vectors = group["vectors"]
        coords = np.asarray(group["coords"][:], dtype=np.int64)
        grid_index = np.asarray(group["grid_index"][:], dtype=np.int64)
        if not (int(attrs["done"]) == vectors.shape[0] == len(coords) == len(grid_index)):
            return None
        store = _Store(stamp, attrs, coords, grid_index, vectors)
        with self._lock:
            self._stores[path] = store
            self._stores.move_to_end(path)
            while len(self._stores) > self._max:
                self._stores.popitem(last=False)
        return store
