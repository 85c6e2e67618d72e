"""Caption and report corpora read from disk: texts with where each came from.

A corpus is a text file (one caption or report per line), or a table read by
:func:`backend.tables.read_table` (CSV, TSV, JSON, JSON lines, Parquet) with a text column and
optional source and id columns. Each entry keeps a reference a user can look up: the id
column's value (else ``line N`` / ``row N``, 1-based), prefixed by the source column's value
when there is one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from backend.errors import InputError

TEXT_SUFFIXES = frozenset({".txt", ".text"})
# every file a corpus may be (a server lists these under --corpora)
CORPUS_SUFFIXES = TEXT_SUFFIXES | {".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq"}


@dataclass(frozen=True)
class CorpusEntry:
    """One caption or report of a corpus.

    Attributes
    ----------
    text
        The text, stripped.
    ref
        Where it came from: ``"<source>/<id>"``, ``"<id>"``, or ``"line N"`` / ``"row N"``.
    """

    text: str
    ref: str


def _cell(path: Path, row: int, column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN: an empty cell
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value).strip()
    raise InputError(f"{path}: row {row}: column {column!r} must be text or an integer id, got {value!r}")


def read_corpus_entries(
    path: str | os.PathLike[str],
    text_column: str = "text",
    *,
    source_column: str | None = None,
    id_column: str | None = None,
) -> list[CorpusEntry]:
    """The non-blank entries of a corpus file, in file order.

    Parameters
    ----------
    path
        ``.txt`` (one entry per line; blank lines skipped) or a table (``.csv``, ``.tsv``,
        ``.json``, ``.jsonl``, ``.parquet``).
    text_column
        The column of a table holding the text.
    source_column, id_column
        Optional columns of a table naming each entry's source (a dataset, a report) and id.

    Raises
    ------
    InputError
        The file is missing or unreadable, lacks a named column (listing those present), a text
        cell is not text (naming the row), or the corpus holds no non-blank entry.
    """
    path = Path(path)
    entries: list[CorpusEntry] = []
    if path.suffix.lower() in TEXT_SUFFIXES:
        if source_column or id_column:
            raise InputError(f"{path}: a text corpus has no columns; source/id columns need a table (CSV, Parquet, JSONL)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as e:
            raise InputError(f"{path}: corpus file not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read the corpus as UTF-8 text ({e})") from e
        entries = [CorpusEntry(line.strip(), f"line {i + 1}") for i, line in enumerate(lines) if line.strip()]
    else:
        from backend.tables import read_table

        columns = [c for c in (text_column, source_column, id_column) if c]
        df = read_table(path, columns)
        texts = df[text_column].tolist()
        sources = df[source_column].tolist() if source_column else [None] * len(texts)
        ids = df[id_column].tolist() if id_column else [None] * len(texts)
        for row, (value, source, ident) in enumerate(zip(texts, sources, ids, strict=True)):
            if not isinstance(value, str):
                raise InputError(f"{path}: row {row}: column {text_column!r} must be text, got {value!r}")
            if not value.strip():
                continue
            ref = _cell(path, row, id_column, ident) if id_column else f"row {row + 1}"
            src = _cell(path, row, source_column, source) if source_column else ""
            entries.append(CorpusEntry(value.strip(), f"{src}/{ref}" if src else ref))
    if not entries:
        raise InputError(f"{path}: the corpus is empty (no non-blank report"
                         + ("" if path.suffix.lower() in TEXT_SUFFIXES else f" in column {text_column!r}") + ")")
    return entries


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex): what a corpus index is keyed by, with the reading options."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except FileNotFoundError as e:
        raise InputError(f"{path}: corpus file not found") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read the corpus ({e})") from e
    return h.hexdigest()
