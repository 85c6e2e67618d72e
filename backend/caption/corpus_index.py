"""A caption corpus embedded once with a vision-language model's text tower, cached on disk.

The index of a corpus lives in a folder of its own under a cache root, named by the corpus
key: the SHA-256 of the corpus file's bytes, the options it is read with, the model's weights
identity (``model_id``) and its text context length. A changed corpus or model therefore
gets a new folder; the same pair finds the one already built. Inside::

    passages.jsonl          the passages (text, ref), written once, atomically
    shards/NNNNNN.npy       (<= shard_size, D) float32 text embeddings, each written atomically
    index.faiss             the FAISS index over all of them (flat, or IVF for large corpora)
    corpus.json             the manifest, written last: its presence means "complete"

Embedding goes shard by shard, so a killed build loses at most the shard in progress and a
rerun embeds only the missing shards (as the embedding cache and the cohort index resume).
Long reports are split into passages that fit the text context with the one splitter,
:mod:`backend.text.passages`; a split passage's ref gets ``#part``.

FAISS is used through :mod:`backend.index.faiss_index` (exact inner product up to
``flat_limit`` passages, the cohort index's IVF above).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.api import Progress, ProgressCallback
from backend.atomic import atomic_path, atomic_write_text
from backend.errors import CancelledError, InputError

FORMAT_VERSION = 1
MANIFEST = "corpus.json"
PASSAGES = "passages.jsonl"
INDEX = "index.faiss"
SHARD_SIZE = 4096
FLAT_LIMIT = 200_000  # above this many passages an IVF index (a flat query on 1M x 512 is ~220 ms)
_TEXT_BATCH = 256


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus file and how it is read.

    Attributes
    ----------
    path
        The corpus file (``.txt``, ``.csv``, ``.tsv``, ``.parquet``, ``.json``, ``.jsonl``).
    text_column, source_column, id_column
        Columns of a table: the text, and optionally each entry's source and id.
    """

    path: str
    text_column: str = "text"
    source_column: str | None = None
    id_column: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class CorpusManifest:
    """What ``corpus.json`` records about a complete corpus index."""

    format_version: int
    key: str
    corpus: str  # the corpus file's name when built
    corpus_sha256: str
    model_id: str
    dim: int
    n_entries: int
    n_passages: int
    reports_split: int
    index_kind: str


def corpus_key(corpus_sha256: str, spec: CorpusSpec, model_id: str, context_length: int) -> str:
    """The folder name of a corpus index: corpus bytes + reading options + model weights."""
    parts = [str(FORMAT_VERSION), corpus_sha256, spec.text_column, spec.source_column or "",
             spec.id_column or "", str(model_id), str(int(context_length))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


class CorpusIndex:
    """A complete corpus index opened for searching; safe to search from any thread.

    Attributes
    ----------
    folder : Path
    manifest : CorpusManifest
    texts, refs : list of str
        Passage texts and where each came from, by label.
    """

    def __init__(self, folder: Path, manifest: CorpusManifest, texts: list[str], refs: list[str], index: Any) -> None:
        self.folder = folder
        self.manifest = manifest
        self.texts = texts
        self.refs = refs
        self.index = index
        self._lock = threading.Lock()  # a FAISS index's search is thread-safe; reconstruct may not be

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def close(self) -> None:
        """Release the FAISS index's memory (a backend closing; this object is then unusable)."""
        with self._lock:
            self.index = None

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine scores and passage labels of each (unit) query row, best first."""
        from backend.index import faiss_index

        return faiss_index.search(self.index, queries, k)

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """The stored text embeddings of ``labels`` (for IVF: their decoded copies)."""
        from backend.index import faiss_index

        with self._lock:
            return faiss_index.reconstruct(self.index, np.asarray(labels, dtype=np.int64))

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> CorpusIndex:
        """Open a complete corpus index folder.

        Raises
        ------
        InputError
            The folder holds no complete corpus index (no manifest, or a file missing).
        """
        from backend.index import faiss_index

        folder = Path(folder)
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            manifest = CorpusManifest(**data)
        except FileNotFoundError as e:
            raise InputError(f"{folder}: not a complete corpus index (no {MANIFEST})") from e
        except (ValueError, TypeError) as e:
            raise InputError(f"{folder / MANIFEST}: unreadable corpus manifest ({e})") from e
        if manifest.format_version != FORMAT_VERSION:
            raise InputError(f"{folder}: corpus index format {manifest.format_version}, this version reads {FORMAT_VERSION}")
        texts, refs = _read_passages(folder / PASSAGES)
        index = faiss_index.load(folder / INDEX)
        if index.ntotal != len(texts) or len(texts) != manifest.n_passages:
            raise InputError(f"{folder}: corpus index holds {index.ntotal} vectors for {len(texts)} passages; rebuild it")
        return cls(folder, manifest, texts, refs, index)


def _read_passages(path: Path) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    refs: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                text, ref = json.loads(line)
                texts.append(text)
                refs.append(ref)
    except FileNotFoundError as e:
        raise InputError(f"{path}: corpus passages missing; rebuild the corpus index") from e
    return texts, refs


def _write_passages(path: Path, texts: Sequence[str], refs: Sequence[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for text, ref in zip(texts, refs, strict=True):
            f.write(json.dumps([text, ref], ensure_ascii=False) + "\n")


def write_corpus_index(
    folder: Path,
    texts: Sequence[str],
    refs: Sequence[str],
    vectors: np.ndarray,
    *,
    key: str,
    corpus: str,
    corpus_sha256: str,
    model_id: str,
    n_entries: int,
    reports_split: int = 0,
    flat_limit: int = FLAT_LIMIT,
) -> CorpusIndex:
    """Index ``vectors`` (unit rows, one per passage) with FAISS and write the manifest last.

    Used by :func:`build_corpus_index` once every shard is embedded, and by the benchmark
    (which plants a million synthetic vectors instead of embedding a million texts).
    """
    from backend.index import faiss_index

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise InputError(f"corpus index: {vectors.shape} vectors for {len(texts)} passages")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / PASSAGES).is_file():
        _write_passages(folder / PASSAGES, texts, refs)
    if len(vectors) <= flat_limit:
        index = faiss_index.new_flat(vectors.shape[1])
    else:
        params = faiss_index.choose_ivf_params(len(vectors), vectors.shape[1])
        sample = vectors[np.random.default_rng(0).choice(len(vectors), params.n_train, replace=False)]
        index = faiss_index.train_ivf(sample, params)
    faiss_index.add(index, vectors)
    faiss_index.save_atomic(index, folder / INDEX)
    manifest = CorpusManifest(
        format_version=FORMAT_VERSION, key=key, corpus=corpus, corpus_sha256=corpus_sha256, model_id=str(model_id),
        dim=int(vectors.shape[1]), n_entries=int(n_entries), n_passages=len(texts), reports_split=int(reports_split),
        index_kind=str(faiss_index.kind_of(index)),
    )
    atomic_write_text(folder / MANIFEST, json.dumps(asdict(manifest), indent=1))
    return CorpusIndex(folder, manifest, list(texts), list(refs), index)


def corpus_folder(root: str | os.PathLike[str], spec: CorpusSpec, model: Any) -> tuple[Path, str]:
    """The folder the index of ``spec`` embedded by ``model`` lives in, and the corpus file's SHA-256."""
    from backend.text.corpus import file_digest

    digest = file_digest(spec.path)
    return Path(root) / corpus_key(digest, spec, str(model.model_id), int(model.context_length)), digest


def build_corpus_index(
    spec: CorpusSpec,
    model: Any,
    root: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    shard_size: int = SHARD_SIZE,
    flat_limit: int = FLAT_LIMIT,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> CorpusIndex:
    """The index of ``spec`` for ``model``: opened from ``root`` if built, else built (resuming).

    Parameters
    ----------
    spec
        The corpus file and its columns.
    model
        A loaded vision-language :class:`backend.models.ClipModel` (its text tower embeds).
    root
        Folder of corpus indexes (``<cache>/corpora``).
    progress, cancel
        ``Progress(done, total, "embedding corpus NAME")`` in passages; a set ``cancel`` stops
        between batches, keeping the shards already written.
    shard_size, flat_limit
        Passages per shard file; the largest corpus indexed exactly (flat).
    encode
        Texts -> (n, D) unit vectors; default: ``model.encode_text``.

    Raises
    ------
    CapabilityError
        The model embeds images only.
    InputError
        The corpus file is missing, unreadable or empty (naming the file and the cause).
    CancelledError
        ``cancel`` was set.
    """
    from backend.models.registry import Capability, require_capability
    from backend.text.corpus import read_corpus_entries
    from backend.text.passages import split_corpus, token_counter

    require_capability(model.entry, Capability.TEXT, "captions from a corpus")
    folder, digest = corpus_folder(root, spec, model)
    if (folder / MANIFEST).is_file():
        if progress is not None:
            progress(Progress(1, 1, f"cached corpus {spec.name}"))
        return CorpusIndex.open(folder)
    if progress is not None:
        progress(Progress(0, 0, f"reading corpus {spec.name}"))
    entries = read_corpus_entries(spec.path, spec.text_column, source_column=spec.source_column, id_column=spec.id_column)
    passages, stats = split_corpus([e.text for e in entries], token_counter(model), int(model.context_length))
    texts = [p.text for p in passages]
    split = {p.report for p in passages if p.part > 0}
    refs = [entries[p.report].ref + (f"#{p.part + 1}" if p.report in split else "") for p in passages]
    folder.mkdir(parents=True, exist_ok=True)
    _write_passages(folder / PASSAGES, texts, refs)
    shards = folder / "shards"
    shards.mkdir(exist_ok=True)
    if encode is None:
        from backend.tasks.zero_shot import _to_numpy

        def encode(batch: list[str]) -> np.ndarray:
            return _to_numpy(model.encode_text(batch))

    parts: list[np.ndarray] = []
    total = len(texts)
    for start in range(0, total, shard_size):
        path = shards / f"{start // shard_size:06d}.npy"
        if path.is_file():  # written by an earlier, interrupted build
            parts.append(np.load(path))
            continue
        chunk = texts[start : start + shard_size]
        vecs = []
        for b in range(0, len(chunk), _TEXT_BATCH):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"corpus {spec.name}: embedding cancelled after {start + b} of {total} passages")
            if progress is not None:
                progress(Progress(start + b, total, f"embedding corpus {spec.name}"))
            vecs.append(encode(chunk[b : b + _TEXT_BATCH]))
        shard = np.concatenate(vecs).astype(np.float32, copy=False)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, shard)
        parts.append(shard)
    if progress is not None:
        progress(Progress(total, total, f"indexing corpus {spec.name}"))
    return write_corpus_index(
        folder, texts, refs, np.concatenate(parts), key=folder.name, corpus=spec.name, corpus_sha256=digest,
        model_id=str(model.model_id), n_entries=len(entries), reports_split=stats.reports_split, flat_limit=flat_limit,
    )
