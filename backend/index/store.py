"""The cohort index's SQLite store: slide metadata, tile coordinates and the vectors themselves.

This store is the index's source of truth; the FAISS file is derived from it (see
``directory.py`` for the recovery rule). One slide version is written in one transaction, so a
slide is either entirely in (metadata, coordinates and vectors) or not at all.

Schema (``meta.sqlite``)::

    info(key PRIMARY KEY, value)            format, model_id, dim, generation, policy, ...
    slides(slide_id PRIMARY KEY,            one row per slide version, never reused
           fingerprint, slide_name, slide_path, spec_key, tile_extent,
           id_start, n_tiles,               its vector ids: [id_start, id_start + n_tiles)
           live, added_at)                  live = 0: retired by a changed file
    slide_data(slide_id PRIMARY KEY,        per slide version:
               coords BLOB,                 int64 (n_tiles, 2) level-0 top-left x, y
               vectors BLOB)                float16 (n_tiles, dim), unit rows

A vector id is a FAISS label: vector ``v`` is tile ``v - id_start`` of the slide whose range
holds it; its level-0 box is ``(x, y, tile_extent, tile_extent)``. Ranges of one generation
are contiguous and cover ``[0, n_total)`` in ``slide_id`` order; a compaction (new generation)
drops retired slides and renumbers ``id_start``.

Why float16 vectors: they are only needed to rebuild or retrain the FAISS index (IVF codes are
lossy and cannot be decoded back), half the disk of float32, and a rounding error of ~1e-3 in
a cosine is far below what separates tissue. Every FAISS index is fed the same rounded vectors,
so a rebuild reproduces the scores of the index it replaces.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError
from backend.index.records import SlideRecord

FORMAT_VERSION = 1
DB_NAME = "meta.sqlite"

_SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE slides (
    slide_id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    slide_name TEXT NOT NULL,
    slide_path TEXT NOT NULL,
    spec_key TEXT NOT NULL,
    tile_extent REAL NOT NULL,
    id_start INTEGER NOT NULL,
    n_tiles INTEGER NOT NULL,
    live INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE UNIQUE INDEX slides_live_fingerprint ON slides(fingerprint) WHERE live = 1;
CREATE UNIQUE INDEX slides_live_path ON slides(slide_path) WHERE live = 1;
CREATE TABLE slide_data (
    slide_id INTEGER PRIMARY KEY REFERENCES slides(slide_id),
    coords BLOB NOT NULL,
    vectors BLOB NOT NULL
);
"""

_SLIDE_COLUMNS = (
    "slide_id, fingerprint, slide_name, slide_path, spec_key, tile_extent, id_start, n_tiles, "
    "live, added_at"
)


def _record(row: tuple) -> SlideRecord:
    return SlideRecord(
        slide_id=int(row[0]),
        fingerprint=row[1],
        slide_name=row[2],
        slide_path=row[3],
        spec_key=row[4],
        tile_extent=float(row[5]),
        id_start=int(row[6]),
        n_tiles=int(row[7]),
        live=bool(row[8]),
        added_at=row[9],
    )


class MetaStore:
    """The SQLite file of one cohort index; usable from any thread, one writer process at a time.

    Threads: one connection opened with ``check_same_thread=False``, every use of it under one
    re-entrant lock (a transaction holds it from ``BEGIN`` to ``COMMIT``). Not a connection per
    thread: the threads that use an index are a pool's (Qt retires idle ones after 30 s), so a
    per-thread connection would leak with its thread, and :meth:`close` could not close the
    connections of other threads (sqlite3 refuses that). The store's statements take
    microseconds to milliseconds next to a FAISS search, so serialising them costs nothing.

    Parameters
    ----------
    path
        The ``meta.sqlite`` file.
    read_only
        Open without write access (no recovery is written back).
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()  # guards self._db (see the class docstring)
        if not path.is_file():
            raise InputError(f"{path}: metadata store not found (is {path.parent} a cohort index?)")
        uri = f"{path.resolve().as_uri()}?mode={'ro' if read_only else 'rw'}"
        try:
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            if not read_only:
                self._db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            version = self.get_info("format")
        except sqlite3.DatabaseError as e:
            raise InputError(f"{path}: not a readable cohort index store ({e})") from e
        if version != str(FORMAT_VERSION):
            raise InputError(
                f"{path}: cohort index format {version!r}, this version reads {FORMAT_VERSION}"
            )

    @classmethod
    def create(cls, path: Path, info: dict[str, str]) -> MetaStore:
        """Create a new store at ``path`` (which must not exist) holding ``info``."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            rows = {"format": str(FORMAT_VERSION), "generation": "0", **info}
            db.executemany("INSERT INTO info VALUES (?, ?)", rows.items())
        finally:
            db.close()
        tmp.replace(path)  # a crash mid-create leaves no half-made store
        return cls(path)

    def close(self) -> None:
        """Close the connection (idempotent; from any thread)."""
        with self._lock:
            self._db.close()

    # --- transactions and info ----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises. Holds the
        store's lock throughout, so no other thread's statement lands inside it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _fetchone(self, sql: str, params: tuple = ()) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def _fetchall(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def get_info(self, key: str) -> str | None:
        row = self._fetchone("SELECT value FROM info WHERE key = ?", (key,))
        return None if row is None else row[0]

    def set_info(self, db: sqlite3.Connection, key: str, value: str) -> None:
        """Set ``key`` inside the caller's transaction ``db``."""
        db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_info("generation") or 0)

    # --- slides -------------------------------------------------------------------------

    def slides(self, *, live_only: bool = True) -> list[SlideRecord]:
        """Slide versions in vector-id order (retired ones too unless ``live_only``)."""
        where = "WHERE live = 1 " if live_only else ""
        rows = self._fetchall(f"SELECT {_SLIDE_COLUMNS} FROM slides {where}ORDER BY id_start, slide_id")
        return [_record(r) for r in rows]

    def n_total(self) -> int:
        """Vector ids used in the current generation (live and retired): the FAISS ``ntotal``."""
        row = self._fetchone("SELECT COALESCE(MAX(id_start + n_tiles), 0) FROM slides")
        return 0 if row is None else int(row[0])

    def insert_slide(
        self,
        db: sqlite3.Connection,
        *,
        fingerprint: str,
        slide_name: str,
        slide_path: str,
        spec_key: str,
        tile_extent: float,
        coords: np.ndarray,
        vectors: np.ndarray,
    ) -> SlideRecord:
        """Append a live slide version at the end of the id space, inside transaction ``db``."""
        id_start = self.n_total()
        added_at = datetime.now(UTC).isoformat(timespec="seconds")
        cur = db.execute(
            "INSERT INTO slides (fingerprint, slide_name, slide_path, spec_key, tile_extent, "
            "id_start, n_tiles, live, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (fingerprint, slide_name, slide_path, spec_key, float(tile_extent), id_start, len(vectors), added_at),
        )
        assert cur.lastrowid is not None  # an INSERT always sets it
        slide_id = cur.lastrowid
        db.execute(
            "INSERT INTO slide_data VALUES (?, ?, ?)",
            (
                slide_id,
                np.ascontiguousarray(coords, dtype="<i8").tobytes(),
                np.ascontiguousarray(vectors, dtype="<f2").tobytes(),
            ),
        )
        return _record((slide_id, fingerprint, slide_name, slide_path, spec_key, tile_extent,
                        id_start, len(vectors), 1, added_at))

    def retire(self, db: sqlite3.Connection, slide_id: int) -> None:
        """Mark a slide version as replaced, inside transaction ``db``."""
        db.execute("UPDATE slides SET live = 0 WHERE slide_id = ?", (slide_id,))

    def read_coords(self, slide: SlideRecord) -> np.ndarray:
        """``(n_tiles, 2)`` int64 level-0 top-left corners of a slide's tiles."""
        (blob,) = self._blob("coords", slide)
        return self._check(np.frombuffer(blob, dtype="<i8"), slide, 2, "coords").astype(np.int64)

    def read_vectors(self, slide: SlideRecord, dim: int) -> np.ndarray:
        """``(n_tiles, dim)`` float32 vectors of a slide (float16 on disk)."""
        (blob,) = self._blob("vectors", slide)
        return self._check(np.frombuffer(blob, dtype="<f2"), slide, dim, "vectors").astype(np.float32)

    def _blob(self, column: str, slide: SlideRecord) -> tuple[bytes]:
        row = self._fetchone(f"SELECT {column} FROM slide_data WHERE slide_id = ?", (slide.slide_id,))
        if row is None:
            raise InputError(f"{self.path}: slide {slide.slide_name!r} has no {column} (store damaged)")
        return row

    def _check(self, flat: np.ndarray, slide: SlideRecord, width: int, what: str) -> np.ndarray:
        if flat.size != slide.n_tiles * width:
            raise InputError(
                f"{self.path}: slide {slide.slide_name!r} has {flat.size} {what} values, "
                f"expected {slide.n_tiles} x {width} (store damaged)"
            )
        return flat.reshape(slide.n_tiles, width)

    def compact(self, db: sqlite3.Connection, generation: int) -> dict[int, int]:
        """Drop retired slides and renumber the live ones densely, inside transaction ``db``.

        Returns the new ``id_start`` of each live ``slide_id``. The caller bumps the
        generation in the same transaction so the renumbering and the FAISS file that
        matches it switch together.
        """
        db.execute("DELETE FROM slide_data WHERE slide_id IN (SELECT slide_id FROM slides WHERE live = 0)")
        db.execute("DELETE FROM slides WHERE live = 0")
        starts: dict[int, int] = {}
        next_start = 0
        rows = db.execute("SELECT slide_id, n_tiles FROM slides ORDER BY id_start, slide_id").fetchall()
        for slide_id, n_tiles in rows:
            starts[int(slide_id)] = next_start
            next_start += int(n_tiles)
        db.executemany("UPDATE slides SET id_start = ? WHERE slide_id = ?", [(s, i) for i, s in starts.items()])
        self.set_info(db, "generation", str(generation))
        return starts

    def policy_json(self) -> dict:
        """The stored :class:`IndexPolicy` fields."""
        return json.loads(self.get_info("policy") or "{}")


# --- the directory's writer lock ----------------------------------------------------------


def acquire_lock(path: Path) -> Any:
    """An exclusive, non-blocking lock on ``path/lock``; the OS drops it if we are killed."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer is the caller's business
        return object()
    f = open(path / "lock", "a+")  # noqa: SIM115 - held open for the index's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise InputError(f"{path}: cohort index is open for writing elsewhere (another process or object)") from e
    return f


def release_lock(lock: Any) -> None:
    """Release a lock from :func:`acquire_lock` (None: nothing to release)."""
    if lock is not None and hasattr(lock, "close"):
        lock.close()  # closing the file drops the flock
