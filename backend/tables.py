"""Reading tables (CSV, TSV, JSON, JSON lines, Parquet) with checked columns.

Shared by the backend (caption corpora) and ``training`` (image-caption tables, which
re-exports these from ``training.data.tables``). pandas is imported on use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backend.errors import InputError

if TYPE_CHECKING:
    import pandas as pd


_READERS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: str | os.PathLike[str], columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a table and check it has ``columns``.

    Parameters
    ----------
    path
        ``.csv``, ``.tsv``, ``.json`` (records or columns), ``.jsonl`` or ``.parquet``.
    columns
        Columns that must be present.

    Raises
    ------
    InputError
        The file is missing, of an unknown type, unreadable, or lacks a column (the message
        names the file and the column and lists the columns present).
    """
    import pandas as pd

    path = Path(path)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown table type {path.suffix!r}; use one of {sorted(_READERS)}")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if kind == "csv":
            df = pd.read_csv(path, keep_default_na=False)
        elif kind == "tsv":
            df = pd.read_csv(path, sep="\t", keep_default_na=False)
        elif kind == "json":
            df = pd.read_json(path)
        elif kind == "jsonl":
            df = pd.read_json(path, lines=True)
        else:
            df = pd.read_parquet(path)
    except Exception as e:  # pandas raises many types for malformed files
        raise InputError(f"{path}: could not be read as {kind} ({type(e).__name__}: {e})") from e
    require_columns(df, columns, path)
    return df


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` naming ``source`` and each missing column, listing those present."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        present = ", ".join(map(str, df.columns)) or "none"
        raise InputError(
            f"{source}: no column {', '.join(map(repr, missing))} (columns present: {present}); "
            "name the right ones with the column flags"
        )
