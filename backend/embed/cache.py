"""The per-slide embedding store on disk (zarr v3).

Layout, under ``<cache root>/embeddings`` (``$HISTOCLIP_CACHE_DIR`` or the platform's user
cache dir, see :func:`backend.paths.cache_root`)::

    <fingerprint>/<model-slug>/<spec_key>.zarr           finished store
    <fingerprint>/<model-slug>/<spec_key>.partial.zarr   store being written
    <fingerprint>/<model-slug>/<spec_key>.lock           held (flock) by the job writing it

Each store is a zarr group with arrays ``coords`` (N, 2) int64, ``grid_index`` (N, 2) int64
and ``vectors`` (N, D) float32, and attributes naming the slide fingerprint, model id, tile
spec, grid geometry and ``done``: the number of leading rows of ``vectors`` that are written.

Resume rule: rows are appended a batch at a time; ``done`` is raised only after the batch's
chunks are written (zarr's LocalStore replaces files atomically), so a run killed at any point
leaves a partial store whose first ``done`` rows are valid, and loses at most one batch. A
rerun with the same key and the same tile coordinates continues from ``done``; any mismatch
starts afresh. When all rows are written the directory is renamed to its final name, so a
finished store is never half-written.

The key is the slide's *content* fingerprint, not its path: a moved or copied file is still a
hit, a changed file is a miss. Names that are not already safe file names (hub ids, spec keys
with ``@``) are sanitised and suffixed with a short hash of the original.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.embed.region_reads import RegionReads
from backend.embed.types import SlideEmbeddings
from backend.errors import HistoclipError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FINAL_SUFFIX = ".zarr"
_PARTIAL_SUFFIX = ".partial.zarr"
_CHUNK_ROWS = 256  # rows of vectors per chunk: a batch rewrites at most ~0.5 MB (D=512)
# flock's "someone else holds it" answers; any other errno means the filesystem cannot lock
_HELD_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})


class EmbeddingCacheError(HistoclipError):
    """The embedding cache cannot be used as it is (no file locks, a store from a newer
    napari-histoclip, an I/O error): nothing was deleted; the message says what to do."""


class _DamagedStore(Exception):
    """A finished store whose content proves it unusable (its own checks failed)."""


def _slug(text: str, max_len: int = 48) -> str:
    """A filesystem-safe name for ``text``; a hash is appended when characters had to be
    replaced or cut, so distinct ids never collide."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) and len(text) <= max_len:
        return text
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:max_len]
    return f"{safe}-{digest}" if safe else digest


@dataclass(frozen=True)
class CacheKey:
    """What identifies a store: slide content, model and tile spec (never the path)."""

    fingerprint: str
    model_id: str
    spec_key: str

    def relpath(self) -> Path:
        return Path(_slug(self.fingerprint, 80)) / _slug(self.model_id) / _slug(self.spec_key, 120)


@dataclass(frozen=True)
class StoreHeader:
    """Everything a store records besides its arrays; written once when the store is created."""

    key: CacheKey
    spec: dict[str, Any]  # dataclasses.asdict(TileSpec)
    tile_extent: float
    stride: float
    origin: tuple[float, float]
    grid_shape: tuple[int, int]
    slide_dimensions: tuple[int, int]
    slide_mpp: float | None
    embed_dim: int

    def to_attrs(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "slide_fingerprint": self.key.fingerprint,
            "model_id": self.key.model_id,
            "spec_key": self.key.spec_key,
            "spec": self.spec,
            "tile_extent": float(self.tile_extent),
            "stride": float(self.stride),
            "origin": [float(v) for v in self.origin],
            "grid_shape": [int(v) for v in self.grid_shape],
            "slide_dimensions": [int(v) for v in self.slide_dimensions],
            "slide_mpp": None if self.slide_mpp is None else float(self.slide_mpp),
            "embed_dim": int(self.embed_dim),
        }


def _spec_from_dict(d: dict[str, Any]) -> Any:
    from backend.slides import TileSpec  # lazy: reading a cache needs no slide reader until here

    names = {f.name for f in dataclasses.fields(TileSpec)}
    return TileSpec(**{k: v for k, v in d.items() if k in names})


class KeyLock:
    """An exclusive advisory lock on one cache key, so two jobs never fill the same store.

    ``fcntl.flock`` on a small ``.lock`` file beside the store: released by :meth:`release`
    or by the OS when the holder dies, so a killed run never leaves a stale lock. Where
    ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def try_acquire(cls, path: Path) -> KeyLock | None:
        """The lock, or None when another job holds it.

        Raises
        ------
        EmbeddingCacheError
            The filesystem cannot lock (``ENOLCK`` on some NFS/SMB mounts, ...): waiting for
            the lock would wait forever, so this says which folder and how to fix it.
        """
        try:
            import fcntl
        except ImportError:
            return cls(path, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in _HELD_ERRNOS:
                return None
            raise EmbeddingCacheError(
                f"cannot lock {path} in the embedding cache folder {path.parent} "
                f"({errno.errorcode.get(e.errno or 0, e.errno)}: {e.strerror}): the filesystem there does "
                "not support file locks (common on NFS/SMB mounts). Put the cache on a local disk: set "
                "HISTOCLIP_CACHE_DIR to a local folder (e.g. HISTOCLIP_CACHE_DIR=/tmp/histoclip-cache)"
            ) from e
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> KeyLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PartialStore:
    """A store being filled batch by batch; see the module docstring for the resume rule."""

    def __init__(self, path: Path, final_path: Path, group: Any) -> None:
        self.path = path
        self.final_path = final_path
        self._group = group
        self._vectors = group["vectors"]
        self.total = int(self._vectors.shape[0])
        self.done = int(group.attrs.get("done", 0))

    def read(self, n: int) -> np.ndarray:
        """The first ``n`` (at most ``done``) rows of vectors already written."""
        return np.asarray(self._vectors[: min(n, self.done)], dtype=np.float32)

    def append(self, vectors: np.ndarray) -> None:
        """Write the next ``len(vectors)`` rows, then record them as done."""
        n = len(vectors)
        if self.done + n > self.total:
            raise ValueError(f"{self.path}: {self.done} + {n} rows exceed the store's {self.total}")
        self._vectors[self.done : self.done + n] = np.asarray(vectors, dtype=np.float32)
        # Only after the data is on disk: a kill between the two loses just this batch.
        self._group.attrs["done"] = self.done + n
        self.done += n

    def finalize(self) -> Path:
        """Rename the finished store to its final key. Returns the final path."""
        if self.done != self.total:
            raise ValueError(f"{self.path}: finalize with {self.done} of {self.total} rows written")
        self._group.attrs["complete"] = True
        try:
            os.replace(self.path, self.final_path)
        except OSError:
            # Another run finished the same key first (rename onto a non-empty dir fails):
            # theirs is as good as ours.
            if not self.final_path.is_dir():
                raise
            shutil.rmtree(self.path, ignore_errors=True)
        return self.final_path


def _proves_damage(e: Exception) -> bool:
    """Whether an error reading a store says its bytes are bad: zarr's metadata errors
    (ValueErrors, JSON), missing attributes, shapes, and RuntimeErrors raised by a codec
    decoding a chunk. Not OSError, MemoryError, ImportError or other RuntimeErrors (an event
    loop shutting down, ...): those say nothing about the store."""
    if isinstance(e, (ValueError, KeyError, TypeError, IndexError)):
        return True
    if isinstance(e, RuntimeError):
        import traceback

        frames = traceback.extract_tb(e.__traceback__)
        return any("codecs" in f.filename or f.filename.startswith("numcodecs") for f in frames)
    return False


class EmbeddingCache:
    """Per-slide embedding stores under one directory. Hold one and pass it to the engine.

    Parameters
    ----------
    root : path, optional
        Cache directory. Default ``<cache root>/embeddings`` with the cache root from
        ``$HISTOCLIP_CACHE_DIR`` or the platform's user cache dir.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from backend.paths import cache_root

            root = cache_root() / "embeddings"
        self.root = Path(root).expanduser()
        self.regions = RegionReads()  # repeated region requests on cached slides (region_reads.py)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.root)!r})"

    # --- paths -------------------------------------------------------------------------

    def final_path(self, key: CacheKey) -> Path:
        rel = key.relpath()
        return self.root / rel.parent / (rel.name + _FINAL_SUFFIX)

    def partial_path(self, key: CacheKey) -> Path:
        rel = key.relpath()
        return self.root / rel.parent / (rel.name + _PARTIAL_SUFFIX)

    def lock_path(self, key: CacheKey) -> Path:
        rel = key.relpath()
        return self.root / rel.parent / (rel.name + ".lock")

    def try_lock(self, key: CacheKey) -> KeyLock | None:
        """Exclusive right to write ``key``'s store, or None while another job has it."""
        return KeyLock.try_acquire(self.lock_path(key))

    def contains(self, key: CacheKey) -> bool:
        return (self.final_path(key) / "zarr.json").is_file()

    # --- reading -----------------------------------------------------------------------

    def load(
        self, key: CacheKey, *, slide_name: str = "", slide_path: str = "", lock: KeyLock | None = None
    ) -> SlideEmbeddings | None:
        """The finished store for ``key`` as :class:`SlideEmbeddings`, or None on a miss.

        ``slide_name`` and ``slide_path`` describe the file the caller opened (the store does
        not keep a path). A store whose content proves it damaged (bad metadata, undecodable
        chunks, missing or non-finite rows, another key) is removed, logged and treated as a
        miss, under the key's lock: ``lock`` if the caller holds it, else taken here; while
        another job holds it the store is left to that job. Anything else (an I/O error,
        memory, a store written by a newer napari-histoclip) is raised and nothing is deleted.

        Raises
        ------
        EmbeddingCacheError
            The store was written by a newer format version, or reading it failed with an
            I/O error.
        """
        path = self.final_path(key)
        if not (path / "zarr.json").is_file():
            self._note_legacy(key)
            return None
        try:
            return self._read(path, key, slide_name=slide_name, slide_path=slide_path)
        except OSError as e:  # transient or permission: the store may be fine
            raise EmbeddingCacheError(f"cannot read the embedding cache store {path}: {e}") from e
        except _DamagedStore as e:
            why = str(e)
        except Exception as e:
            if not _proves_damage(e):
                raise
            why = f"{type(e).__name__}: {e}"  # zarr metadata, codec and shape errors: the bytes are bad
        self._remove_damaged(key, path, why, lock)
        return None

    def _remove_damaged(self, key: CacheKey, path: Path, why: str, lock: KeyLock | None) -> None:
        own = lock if lock is not None else self.try_lock(key)
        if own is None:  # the job holding the lock is rebuilding this store
            log.warning("embedding cache %s is damaged (%s); another job holds its lock, leaving it", path, why)
            return
        try:
            log.warning("embedding cache %s is damaged (%s); removing it", path, why)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            if lock is None:
                own.release()

    def _note_legacy(self, key: CacheKey) -> None:
        """Say so when a store of the same slide was made by an older napari-histoclip that
        keyed hub models by name only: it cannot be proven to match the weights now loaded."""
        from backend.models.identity import legacy_ids

        for old in legacy_ids(key.model_id):
            legacy = self.final_path(CacheKey(key.fingerprint, old, key.spec_key))
            if (legacy / "zarr.json").is_file():
                log.warning(
                    "embedding cache %s was made with model %r before napari-histoclip recorded which "
                    "weights a model has; it is not used for %s (it may hold other weights). "
                    "Delete it to free the space.",
                    legacy, old, key.model_id,
                )

    def _read(self, path: Path, key: CacheKey, *, slide_name: str, slide_path: str) -> SlideEmbeddings:
        group, a = open_checked(path, key)
        vectors = np.asarray(group["vectors"][:], dtype=np.float32)
        if int(a["done"]) != len(vectors) or not np.isfinite(vectors).all():
            raise _DamagedStore(f"done={a['done']} of {len(vectors)} rows, or non-finite vectors")
        return embeddings_of(
            key, a, slide_name=slide_name, slide_path=slide_path,
            coords=group["coords"][:], grid_index=group["grid_index"][:], vectors=vectors,
        )

    # --- writing -----------------------------------------------------------------------

    def open_partial(self, header: StoreHeader, coords: np.ndarray, grid_index: np.ndarray) -> PartialStore:
        """The partial store for ``header.key``: resumed if it matches these tiles, else new.

        The caller must hold :meth:`try_lock` for the key while it writes.
        """
        import zarr
        from zarr.storage import LocalStore

        path = self.partial_path(header.key)
        final = self.final_path(header.key)
        coords = np.ascontiguousarray(coords, dtype=np.int64).reshape(-1, 2)
        grid_index = np.ascontiguousarray(grid_index, dtype=np.int64).reshape(-1, 2)
        if path.is_dir():
            try:
                group = zarr.open_group(store=LocalStore(path), mode="r+")
                if self._resumable(group, header, coords):
                    return PartialStore(path, final, group)
                log.info("partial embedding store %s does not match this run; starting afresh", path)
            except Exception as e:  # noqa: BLE001 - a damaged partial store is just restarted
                log.warning("partial embedding store %s is unreadable (%s); starting afresh", path, e)
            shutil.rmtree(path, ignore_errors=True)

        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(coords)
        group = zarr.open_group(store=LocalStore(path), mode="w")
        group.create_array("coords", data=coords, chunks=(max(n, 1), 2))
        group.create_array("grid_index", data=grid_index, chunks=(max(n, 1), 2))
        group.create_array(
            "vectors",
            shape=(n, header.embed_dim),
            dtype="float32",
            chunks=(min(_CHUNK_ROWS, max(n, 1)), header.embed_dim),
            fill_value=np.nan,  # unwritten rows read as NaN, never as plausible zeros
        )
        # The header goes in last: a store without it is not resumable and gets rebuilt.
        group.attrs.update({**header.to_attrs(), "done": 0, "complete": False})
        return PartialStore(path, final, group)

    @staticmethod
    def _resumable(group: Any, header: StoreHeader, coords: np.ndarray) -> bool:
        a = dict(group.attrs)
        expected = json.loads(json.dumps(header.to_attrs()))  # as JSON gives them back
        if any(a.get(k) != v for k, v in expected.items()):
            return False
        vec = group["vectors"]
        if vec.shape != (len(coords), header.embed_dim) or not 0 <= int(a.get("done", -1)) <= len(coords):
            return False
        return bool(np.array_equal(group["coords"][:], coords))

    # --- housekeeping ------------------------------------------------------------------

    def entries(self) -> Iterator[tuple[CacheKey, Path]]:
        """Every finished store: its key (read from its attributes) and its path."""
        if not self.root.is_dir():
            return
        for meta in sorted(self.root.glob(f"*/*/*{_FINAL_SUFFIX}/zarr.json")):
            if meta.parent.name.endswith(_PARTIAL_SUFFIX):
                continue
            try:
                a = json.loads(meta.read_text())["attributes"]
                yield CacheKey(a["slide_fingerprint"], a["model_id"], a["spec_key"]), meta.parent
            except (OSError, ValueError, KeyError):
                continue

    def remove(self, key: CacheKey) -> bool:
        """Delete the finished and partial stores of ``key``. True if anything was removed."""
        removed = False
        for p in (self.final_path(key), self.partial_path(key)):
            if p.is_dir():
                shutil.rmtree(p)
                removed = True
        return removed


def open_checked(path: Path, key: CacheKey) -> tuple[Any, dict[str, Any]]:
    """The finished store at ``path`` opened read-only, and its attributes, once they prove
    it is a complete store of ``key`` in a format this version reads.

    Raises
    ------
    EmbeddingCacheError
        The store was written by a newer format version.
    _DamagedStore
        Its attributes say it is incomplete, of another format or of another key.
    """
    import zarr
    from zarr.storage import LocalStore

    group = zarr.open_group(store=LocalStore(path, read_only=True), mode="r")
    a = dict(group.attrs)
    version = a.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise EmbeddingCacheError(
            f"embedding cache store {path} has format version {version}, newer than the {FORMAT_VERSION} "
            "this napari-histoclip reads (another install wrote it): upgrade napari-histoclip, or give "
            "this one its own cache (HISTOCLIP_CACHE_DIR); the store was left as it is"
        )
    if version != FORMAT_VERSION or not a.get("complete"):
        raise _DamagedStore(f"format_version {version!r}, complete={a.get('complete')!r}")
    found = CacheKey(str(a["slide_fingerprint"]), str(a["model_id"]), str(a["spec_key"]))
    if found != key:
        raise _DamagedStore(f"store records {found}, expected {key}")
    return group, a


def embeddings_of(
    key: CacheKey,
    attrs: dict[str, Any],
    *,
    slide_name: str,
    slide_path: str,
    coords: np.ndarray,
    grid_index: np.ndarray,
    vectors: np.ndarray,
) -> SlideEmbeddings:
    """:class:`SlideEmbeddings` of a store's rows (all of them, or a region's) and attributes."""
    a = attrs
    return SlideEmbeddings(
        slide_fingerprint=key.fingerprint,
        slide_name=slide_name,
        slide_path=slide_path,
        model_id=key.model_id,
        spec=_spec_from_dict(a["spec"]),
        spec_key=key.spec_key,
        coords=coords,
        tile_extent=float(a["tile_extent"]),
        grid_index=grid_index,
        grid_shape=tuple(a["grid_shape"]),
        vectors=vectors,
        stride=float(a["stride"]),
        origin=tuple(a["origin"]),
        slide_dimensions=tuple(a["slide_dimensions"]),
        slide_mpp=a["slide_mpp"],
    )
