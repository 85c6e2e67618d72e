"""The float16 vectors file of a cohort index, for the exact re-ranking stage of an IVF search.

An IVF search (``faiss_index.search``) proposes ``k * k_factor`` candidates from 4-bit
fast-scan PQ codes, and ``IndexRefine`` re-ranks them with 6-bit scalar-quantised codes
(SQ6). SQ6 cannot order the nearly equidistant neighbours of an isotropic cluster: on the
benchmark's ``--iso 1`` data at dimension 1536 recall@10 stops at ~0.91 whatever
``k_factor`` (``BENCHMARKS.md``). So the SQ6 stage keeps its best ``K2 = k * rerank_factor``
candidates, and those are re-ranked exactly from a float16 copy of the vectors, memory-mapped
from this file: recall@10 0.98 for +0.1-0.6 ms. The copy stays on disk (the page cache): a
query reads its ``K2`` rows (40 x 3 KB at k=10, 1536 dimensions), gathered in ascending order.

The file (``vectors-<generation>.npy`` beside ``index-<generation>.faiss``)
    A numpy ``.npy`` file of ``<f2`` rows ``(n, dim)`` in FAISS label order, so
    ``np.load(path, mmap_mode="r")[label]`` is that label's vector, bit for bit the float16
    vector the store keeps (``store.py``) and FAISS was fed. Its header has a fixed length
    (:data:`HEADER_BYTES`), so appending rows rewrites the shape in place.
Writes
    A whole file (index creation, every rebuild) is written to a temporary sibling, fsynced
    and renamed (:func:`backend.atomic.atomic_path`). An append writes the rows after the
    last committed one, fsyncs them, and only then rewrites the header's row count: the
    header is the commit. A crash leaves a file whose header counts a prefix of the store's
    vector ids (bytes past it are ignored and overwritten), which recovery extends from the
    store like the FAISS file; a file that cannot be trusted (unreadable header, another
    dimension, fewer bytes than its header counts, more rows than the store, rows that differ
    from the store's) is rewritten from the store by a writer, and skipped (the search falls
    back to the SQ6 order, with one warning) by a read-only reader.

The index's store records that it keeps this file (``info`` key :data:`INFO_KEY`); indexes
made before it have no file and search as before until their next rebuild writes one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from backend.atomic import atomic_path
from backend.errors import InputError
from backend.index.faiss_index import inner_products

#: ``info`` key of the store saying the index keeps a vectors file, and the file's format.
INFO_KEY = "exact_rows"
INFO_VALUE = "float16-npy-1"
#: Bytes before the first row: magic, version, header length and the padded header dict.
HEADER_BYTES = 128
#: The SQ6 stage keeps ``k * RERANK_FACTOR`` candidates for the exact stage: 4 (K2 = 40 at
#: k = 10) reached recall@10 0.98 against an exact bound of 0.982 on the hardest benchmark
#: data (1536 dimensions, isotropic clusters, k_factor 64). More rows only cost reads.
RERANK_FACTOR = 4

_MAGIC = b"\x93NUMPY\x01\x00"


def rows_path(directory: Path, generation: int) -> Path:
    """The vectors file of ``generation`` in an index directory."""
    return directory / f"vectors-{generation}.npy"


def is_rows_file(path: Path) -> bool:
    """Whether ``path`` is named like a vectors file (of any generation)."""
    return path.name.startswith("vectors-") and path.suffix == ".npy"


def _header(n: int, dim: int) -> bytes:
    text = repr({"descr": "<f2", "fortran_order": False, "shape": (int(n), int(dim))})
    body = HEADER_BYTES - len(_MAGIC) - 2
    return _MAGIC + struct.pack("<H", body) + (text.ljust(body - 1) + "\n").encode("latin1")


def check_rows(path: Path, dim: int) -> int:
    """Committed rows of the vectors file at ``path`` (see the module docstring).

    Raises
    ------
    InputError
        Naming the file and the cause: missing, unreadable header, wrong type or dimension,
        or fewer bytes than the header counts (truncated).
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):
                raise ValueError(f"npy format {version}, expected (1, 0)")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
    except FileNotFoundError as e:
        raise InputError(f"{path}: the index's float16 vectors file is missing") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: not a readable float16 vectors file ({e})") from e
    if dtype != np.dtype("<f2") or fortran or len(shape) != 2 or offset != HEADER_BYTES:
        raise InputError(f"{path}: holds {dtype} {shape} (header {offset} B), expected <f2 (n, {dim}) "
                         f"with a {HEADER_BYTES} B header")
    if shape[1] != dim:
        raise InputError(f"{path}: vectors of dimension {shape[1]}, the index's are {dim}")
    need = HEADER_BYTES + shape[0] * dim * 2
    size = path.stat().st_size
    if size < need:
        raise InputError(f"{path}: truncated ({size} B, its header counts {shape[0]} rows = {need} B)")
    return int(shape[0])


def write_rows(path: Path, chunks: Iterable[np.ndarray], dim: int) -> int:
    """Write a whole vectors file atomically from ``chunks`` of ``(m, dim)`` rows, in order.

    Returns
    -------
    int
        Rows written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(_header(0, dim))
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype="<f2").reshape(-1, dim).tobytes())
            n += len(chunk)
        f.seek(0)
        f.write(_header(n, dim))
    return n


def append_rows(path: Path, vectors: np.ndarray, start: int, dim: int) -> int:
    """Append ``vectors`` as rows ``[start, start + len)`` of the file; returns the new count.

    Raises
    ------
    InputError
        The file is unreadable (see :func:`check_rows`) or does not end at row ``start``
        (out of step with the FAISS ids; recovery rewrites it).
    """
    have = check_rows(path, dim)
    if have != start:
        raise InputError(f"{path}: holds {have} rows, expected {start} before this append (out of step "
                         "with the FAISS index; reopening the index rewrites it)")
    data = np.ascontiguousarray(vectors, dtype="<f2").reshape(-1, dim)
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + start * dim * 2)  # bytes of an interrupted append
        f.seek(0, os.SEEK_END)
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())  # the rows are on disk before the header counts them
        f.seek(0)
        f.write(_header(start + len(data), dim))
    return start + len(data)


def open_rows(path: Path) -> np.ndarray:
    """The committed rows, memory-mapped read-only (``(n, dim)`` float16; none committed: an
    empty array, as an empty range cannot be mapped)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
    return np.load(path, mmap_mode="r") if shape[0] else np.zeros(shape, np.float16)


def gather(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``rows[labels]`` as float32, read in ascending label order (sequential page reads)."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    out = np.empty((len(labels), rows.shape[1]), np.float32)
    out[order] = rows[labels[order]]
    return out


def rerank(queries: np.ndarray, labels: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query among its candidate ``labels`` (-1: none).

    Parameters
    ----------
    queries
        ``(n, dim)`` float32 unit rows.
    labels
        ``(n, K2)`` candidate labels of each query, -1 padded.
    rows
        The memory-mapped vectors (every label must be a row).
    k
        Results per query.

    Returns
    -------
    scores, labels
        ``(n, k)`` inner products and labels, best first; missing results: -inf and -1.
    """
    scores = np.full((len(queries), k), -np.inf, np.float32)
    out = np.full((len(queries), k), -1, np.int64)
    for i, (query, cand) in enumerate(zip(queries, labels, strict=True)):
        cand = np.sort(cand[cand >= 0])
        if len(cand) == 0:
            continue
        sims = inner_products(rows[cand], query)
        top = np.argsort(-sims, kind="stable")[:k]
        scores[i, : len(top)] = sims[top]
        out[i, : len(top)] = cand[top]
    return scores, out
