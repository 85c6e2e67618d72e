"""The FAISS side of the cohort index: which index type, how to train, search, save and load.

Two kinds of index, chosen by size (see :class:`~backend.index.records.IndexPolicy`):

``flat``
    ``IndexFlatIP``: exact cosine similarity on the (normalised) vectors. Labels are vector
    ids (positions).
``ivf``
    ``IVF<nlist>,PQ<m>x4fs,Refine(SQ6)`` under the L2 metric: an inverted file with 4-bit
    fast-scan PQ codes proposes ``k * k_factor`` candidates, which are re-ranked with 6-bit
    scalar-quantised copies of the vectors. On unit vectors L2 ranks like cosine, and
    ``cos = 1 - d^2 / 2``. Why this one (measured by ``benchmarks/search_scale.py``, 1M x 512):
    PQ alone misses recall@10 >= 0.95 (its distances are too coarse to order near neighbours),
    re-ranking needs more precise codes, and SQ8 codes (512 B) alone are already 1/4 of a
    float32 flat index; SQ6 (384 B) + PQ (64 B) + ids (8 B) is ~0.22 of it. Fast-scan PQ keeps
    the list scan in SIMD registers, so visiting many lists stays cheap. When the cohort index
    keeps its float16 vectors file, the SQ6 stage keeps ``k * rerank_factor`` candidates and
    these are re-ranked exactly from it (``exact_rows.py``): SQ6 cannot order the nearly
    equidistant neighbours of isotropic clusters (recall@10 0.91 at 1536 dimensions; 0.98
    with the exact stage).

FAISS is imported lazily (``import backend`` must stay light). Nothing here sets FAISS's
thread count: that is the process owner's decision (the benchmark sets 2).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError


def _faiss() -> Any:
    import faiss  # lazy: ~0.3 s and a large shared library

    return faiss


class IndexKind(StrEnum):
    """The FAISS index type in use."""

    FLAT = "flat"
    IVF = "ivf"


@dataclass(frozen=True)
class IvfParams:
    """Shape and search knobs of an IVF index.

    Attributes
    ----------
    nlist
        Number of inverted lists (k-means centroids).
    pq_m
        Number of 4-bit fast-scan PQ sub-quantisers (``pq_m / 2`` bytes a vector).
    refine
        FAISS codec of the re-ranking copies (``SQ6``: 6 bits a dimension).
    nprobe
        Lists visited per query.
    k_factor
        Candidates re-ranked per result wanted.
    n_train
        Training sample size (for the k-means centroids and the PQ codebooks).
    """

    nlist: int
    pq_m: int
    refine: str
    nprobe: int
    k_factor: int
    n_train: int

    @property
    def factory(self) -> str:
        """The ``faiss.index_factory`` string of this index."""
        return f"IVF{self.nlist},PQ{self.pq_m}x4fs,Refine({self.refine})"


def choose_ivf_params(
    n: int, dim: int, *, nprobe: int | None = None, k_factor: int | None = None
) -> IvfParams:
    """Pick IVF parameters for ``n`` vectors of dimension ``dim``.

    ``nlist`` is 4 times the power of two nearest ``sqrt(n)`` (FAISS's guideline is 4 to 16
    ``sqrt(n)`` lists up to a few million vectors), with at least 39 training vectors a
    centroid (FAISS's own floor), trained on 40 vectors a centroid (at least 65,536). Why not
    ``sqrt(n)``: k-means lists on clustered embeddings are unequal (on the benchmark's
    isotropic clusters at 1M x 1536, 1,024 lists held up to 65,000 vectors each, imbalance
    factor 15), and a query's nearest lists are the big ones: 16 of 1,024 lists scanned a
    third of the index, 7.7 of its 9.6 ms. With 4,096 lists (imbalance 8) 16 lists scan 95,000
    codes and the search takes 3.6 ms with the exact stage, recall@10 0.990 either way; with
    the default nprobe below (64 of 4,096 lists) ``CohortIndex.search`` measured p50 5.55 ms,
    recall@10 0.988 (BENCHMARKS.md). The price is training, 143 s instead of 18 s at 1M x 1536.

    ``nprobe`` visits 1/16 of the lists (at least 32: the 8 lists of ``sqrt(n)`` vectors a
    small index visited before, in lists 4 times smaller) for codes of up to 64 bytes (dimension
    <= 512): on the benchmark's clustered data recall stops improving at 1/64 already, so this
    leaves margin for less tidy real embeddings. Longer codes cost more per list visited, so
    the fraction is divided by the power of two at or above ``code bytes / 64`` (the bytes
    scanned a query stay within the 512-d budget): 1/32 of the lists at 768 and 1024
    dimensions, 1/64 at 1536 (with 1,024 lists the benchmark measured the same recall@10 at
    16, 32, 64 and 128 of them).
    ``k_factor`` 64 for codes of up to 256 bytes (dimension <= 2048): 64 PQ candidates a hit.
    The exact float16 stage (``exact_rows``) orders the candidates exactly, so recall is
    bounded by whether the PQ candidates hold the true neighbours, and on the benchmark's
    isotropic clusters they do only from 64: at 1M x 512 recall@10 with the exact stage was
    0.872 / 0.951 / 0.985 at k_factor 16 / 32 / 64 (p50 1.66 / 1.71 / 1.75 ms), at 100k x 1536
    the bound 0.86 at 16 and 0.98 at 64 (+0.5 ms). Longer codes multiply it like ``nprobe``'s
    divisor (128 beyond 2048 dimensions).

    Parameters
    ----------
    n, dim
        Number and dimension of the vectors the index will hold.
    nprobe, k_factor
        Overrides of the automatic values.

    Returns
    -------
    IvfParams
    """
    if n < 1 or dim < 2:
        raise InputError(f"cannot size an IVF index for n={n} vectors of dim={dim}")
    nlist = 4 * 2 ** round(math.log2(max(math.sqrt(n), 1.0)))
    nlist = int(max(1, min(nlist, 16384, n // 39)))
    # 4-bit sub-quantisers over 4 dimensions each: 1 byte per 8 dimensions
    pq_m = dim // 4 if dim % 4 == 0 else (dim // 2 if dim % 2 == 0 else dim)
    code_bytes = -(-pq_m // 2)
    longer = 2 ** max(0, math.ceil(math.log2(code_bytes / 64)))  # 1 up to 64 B, 2, 4...
    fraction = 16 * longer
    auto_nprobe = min(nlist, max(32, nlist // fraction))
    n_train = int(min(n, max(40 * nlist, 65_536)))
    return IvfParams(
        nlist=nlist,
        pq_m=pq_m,
        refine="SQ6",
        nprobe=int(nprobe or auto_nprobe),
        k_factor=int(k_factor or 16 * max(4, longer)),
        n_train=n_train,
    )


def new_flat(dim: int) -> Any:
    """An empty exact inner-product index."""
    return _faiss().IndexFlatIP(dim)


def train_ivf(sample: np.ndarray, params: IvfParams) -> Any:
    """An empty IVF index trained on ``sample`` (``(n, dim)`` float32, unit rows)."""
    faiss = _faiss()
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    index = faiss.index_factory(sample.shape[1], params.factory, faiss.METRIC_L2)
    # 4-bit codebooks have 16 centroids: a small cohort's sample is plenty for them, so
    # silence FAISS's "please provide at least 624 training points" on stderr
    faiss.downcast_index(faiss.extract_index_ivf(index)).pq.cp.min_points_per_centroid = 1
    index.train(sample)
    faiss.extract_index_ivf(index).nprobe = params.nprobe
    index.k_factor = float(params.k_factor)
    return index


def kind_of(index: Any) -> IndexKind:
    """The :class:`IndexKind` of a FAISS index made by this module."""
    return IndexKind.FLAT if isinstance(index, _faiss().IndexFlat) else IndexKind.IVF


def nlist_of(index: Any) -> int | None:
    """Number of inverted lists, or None for a flat index."""
    if kind_of(index) is IndexKind.FLAT:
        return None
    return int(_faiss().extract_index_ivf(index).nlist)


def list_imbalance(index: Any) -> float | None:
    """How unequal the inverted lists are (FAISS's imbalance factor: 1 when all are equal), or
    None for a flat or empty index. A query's cost follows the lists it visits, and its nearest
    lists tend to be the big ones: at 14.8 (1,024 lists on the benchmark's clustered data at
    1M x 1536) 16 lists held a third of the index; see :func:`choose_ivf_params`."""
    if kind_of(index) is IndexKind.FLAT or index.ntotal == 0:
        return None
    return float(_faiss().extract_index_ivf(index).invlists.imbalance_factor())


def add(index: Any, vectors: np.ndarray) -> None:
    """Append ``vectors`` (labels continue from ``index.ntotal``)."""
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def search(
    index: Any,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    nprobe: int | None = None,
    k_factor: int | None = None,
    rows: np.ndarray | None = None,
    rerank_factor: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine similarities and labels of each query row.

    Parameters
    ----------
    index
        A flat or IVF index made by this module.
    queries
        ``(n, dim)`` float32 unit rows.
    k
        Results per query.
    allowed
        Optional boolean mask over labels ``[0, ntotal)``: only these can be returned
        (retired vectors and slide filters). Applied inside FAISS, so ``k`` results come back
        whenever ``k`` labels are allowed.
    nprobe, k_factor
        IVF overrides of the values stored in the index.
    rows
        IVF: the index's float16 vectors in label order (memory-mapped, see
        :mod:`backend.index.exact_rows`), covering every label. Given, the SQ6 stage keeps
        ``k * rerank_factor`` of the same ``k * k_factor`` PQ candidates and these are
        re-ranked exactly from ``rows``. Ignored for a flat index (already exact).
    rerank_factor
        Override of :data:`~backend.index.exact_rows.RERANK_FACTOR`.

    Returns
    -------
    scores, labels
        ``(n, k)`` arrays, best first; missing results have label -1 and score -inf.
    """
    faiss = _faiss()
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = int(max(1, min(k, index.ntotal)))
    keep: list[Any] = []  # FAISS holds raw pointers: keep the Python objects alive
    sel = None
    if allowed is not None:
        bitmap = np.packbits(allowed.astype(bool, copy=False), bitorder="little")
        sel = faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap))
        keep += [bitmap, sel]
    if kind_of(index) is IndexKind.FLAT:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        dist, labels = index.search(queries, k, params=params)
        scores = dist
    else:
        ivf = faiss.extract_index_ivf(index)
        base = faiss.SearchParametersIVF(nprobe=int(nprobe or ivf.nprobe))
        if sel is not None:
            base.sel = sel
        factor = float(k_factor or index.k_factor)
        k_sq6 = k
        if rows is not None:  # the SQ6 stage keeps K2 of the same k * k_factor candidates
            from backend.index.exact_rows import RERANK_FACTOR

            k_sq6 = int(min(index.ntotal, max(k, k * (rerank_factor or RERANK_FACTOR)), max(k, k * factor)))
            factor = k * factor / k_sq6 + 1e-4  # FAISS truncates k_sq6 * factor to an integer
        params = faiss.IndexRefineSearchParameters(k_factor=factor, base_index_params=base)
        keep += [base]
        dist, labels = index.search(queries, k_sq6, params=params)
        if rows is not None:
            from backend.index.exact_rows import rerank

            scores, labels = rerank(queries, labels, rows, k)
        else:
            scores = 1.0 - dist / 2.0  # squared L2 of unit vectors -> cosine
    scores = np.where(labels >= 0, np.clip(scores, -1.0, 1.0), -np.inf).astype(np.float32)
    del keep
    return scores, labels


def inner_products(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``rows @ query`` for one query vector, in FAISS's single-threaded SIMD kernel.

    numpy's BLAS splits even a product this small over its threads, and a thread waiting for
    a core another process holds costs scheduler ticks: a ``(1024, 1536)`` product took 8 ms
    on a busy 2-core machine against 0.13 ms idle; this kernel 0.22 ms either way.
    """
    faiss = _faiss()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    query = np.ascontiguousarray(query, dtype=np.float32).ravel()
    if rows.ndim != 2 or rows.shape[1] != len(query):
        raise InputError(f"inner products of rows {rows.shape} with a query of {len(query)} values")
    out = np.empty(len(rows), np.float32)
    if len(rows):
        faiss.fvec_inner_products_ny(faiss.swig_ptr(out), faiss.swig_ptr(query), faiss.swig_ptr(rows),
                                     len(query), len(rows))
    return out


def reconstruct(index: Any, labels: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Stored vectors of ``labels``, ``(len(labels), dim)`` float32: from ``rows`` (the float16
    vectors file, exact) when given, else from the index (for IVF: SQ6-decoded)."""
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return np.zeros((0, index.d), np.float32)
    if rows is not None:
        from backend.index.exact_rows import gather

        return gather(rows, labels)
    if kind_of(index) is IndexKind.IVF:
        index = index.refine_index  # the IVF codes cannot be decoded without a direct map
    return index.reconstruct_batch(labels)


def save_atomic(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` so that a crash leaves the old file or the new, never half.

    The bytes go to ``<path>.tmp``, are flushed to disk, and the file is renamed over
    ``path`` (``os.replace`` is atomic on POSIX and Windows); the directory is synced so the
    rename itself survives a power cut.
    """
    faiss = _faiss()
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load(path: Path) -> Any:
    """Read a FAISS index file; raises :class:`InputError` naming the file if unreadable."""
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as e:  # FAISS reports truncated/corrupt files as RuntimeError
        raise InputError(f"{path}: not a readable FAISS index ({e})") from e


def memory_bytes(index: Any) -> int:
    """Bytes of the index's serialised form, a close proxy for its memory footprint."""
    return int(_faiss().serialize_index(index).nbytes)
