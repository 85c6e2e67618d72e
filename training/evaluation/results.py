"""One JSON schema for every evaluation result, and leaderboards merged from results.

A result document (``schema`` = ``histoclip-eval/1``)::

    {"schema": "histoclip-eval/1", "task": "zeroshot",
     "model": {"name": "quiltnet-b32", "model_id": "...", "weights": "<identity or null>",
               "family": "open_clip", "random_weights": false},
     "dataset": {"name": "crc-val", "path": "...", "sha256": "<hex>", "n": 1000},
     "settings": {...}, "metrics": {"balanced_accuracy": 0.91, ...},
     "details": {...},                 # per-class recall, confusion matrix, per-seed scores
     "versions": {"python": ..., "torch": ..., "scikit-learn": ..., "histoclip": ...},
     "created": "2026-12-01T00:00:00Z"}

``metrics`` holds only numbers (or ``{"mean": m, "std": s}`` for seeded metrics), so any two
results of one task line up in a leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.atomic import atomic_write_text
from backend.errors import InputError

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

SCHEMA = "histoclip-eval/1"
_LIBS = ("torch", "open_clip_torch", "transformers", "scikit-learn", "numpy", "peft")


def library_versions() -> dict[str, str | None]:
    """Versions of Python, histoclip and the libraries results depend on (None: not installed)."""
    import backend

    out: dict[str, str | None] = {"python": platform.python_version(), "histoclip": backend.__version__}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def hash_files(paths: Iterable[str | os.PathLike[str]], labels: Iterable[object] = ()) -> str:
    """SHA-256 over the files' bytes in the given order (and their labels): a dataset identity."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        digest.update(b"\0")
    for label in labels:
        digest.update(str(label).encode() + b"\0")
    return digest.hexdigest()


def model_record(model: Encoder, name: str) -> dict[str, Any]:
    """What identifies a loaded ``ClipModel`` in a result."""
    return {
        "name": str(name),
        "model_id": str(model.model_id),
        # model_id is the weights identity (hf-hub:ORG/REPO@COMMIT, bundle:NAME@SHA256 prefix)
        "weights": str(model.model_id),
        "family": str(getattr(model.family, "value", model.family)),
        "random_weights": bool(model.random_weights),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (JSON has no NaN), numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def make_result(
    task: str,
    *,
    model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    settings: Mapping[str, Any],
    metrics: Mapping[str, Any],
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result document of the one schema (see the module docstring)."""
    for key, value in metrics.items():
        ok = isinstance(value, (int, float)) or (isinstance(value, Mapping) and set(value) == {"mean", "std"})
        if not ok:
            raise InputError(f"metric {key!r}: must be a number or {{mean, std}}, got {value!r}")
    return _clean({
        "schema": SCHEMA, "task": task, "model": dict(model), "dataset": dict(dataset), "settings": dict(settings),
        "metrics": dict(metrics), "details": dict(details or {}), "versions": library_versions(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })


def write_result(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a result document atomically (strict JSON)."""
    return atomic_write_text(path, json.dumps(result, indent=2, allow_nan=False) + "\n")


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check one result document."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: result file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON result ({e})") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{path}: not an evaluation result (schema {found!r}, expected {SCHEMA!r})")
    for key in ("task", "model", "dataset", "metrics"):
        if key not in doc:
            raise InputError(f"{path}: result lacks the field {key!r}")
    return doc


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return f"{value['mean']:.4f} ± {value['std']:.4f}" if value.get("mean") is not None else ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def leaderboard(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (model, task, dataset), one column per metric seen."""
    metric_names: list[str] = []
    for r in results:
        metric_names.extend(m for m in r["metrics"] if m not in metric_names)
    header = ["model", "model_id", "task", "dataset", *metric_names]
    rows = []
    for r in results:
        ds = r["dataset"]
        dataset = ds.get("name") or ds.get("path") or ""
        rows.append([str(r["model"].get("name", "")), str(r["model"].get("model_id", "")), str(r["task"]),
                     str(dataset), *(_fmt(r["metrics"].get(m)) for m in metric_names)])
    return header, rows


def merge_results(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a Markdown leaderboard to ``out`` and the same table as CSV beside it."""
    import csv
    import io

    if not paths:
        raise InputError("eval merge: give at least one result file")
    header, rows = leaderboard([read_result(p) for p in paths])
    out = Path(out)
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    atomic_write_text(out, "\n".join(md) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    csv_path = out.with_suffix(".csv")
    atomic_write_text(csv_path, buf.getvalue())
    return out, csv_path
