"""Reading and writing image-caption tables (CSV, TSV, JSON, JSON lines, Parquet), atomically."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from backend.atomic import atomic_path

# read_table and require_columns live in the backend (its corpus reader uses them): one implementation
from backend.tables import read_table, require_columns

if TYPE_CHECKING:
    import pandas as pd


__all__ = ["TableFormat", "read_table", "require_columns", "write_table"]


class TableFormat(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"
    JSONL = "jsonl"


def write_table(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` atomically as Parquet, CSV or JSON lines, by the path's suffix."""
    path = Path(path)
    fmt = TableFormat(path.suffix.lower().lstrip("."))
    with atomic_path(path) as tmp:
        if fmt is TableFormat.PARQUET:
            df.to_parquet(tmp, index=False)
        elif fmt is TableFormat.CSV:
            df.to_csv(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", lines=True)
    return path
