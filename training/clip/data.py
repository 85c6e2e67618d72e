"""Training data for CLIP fine-tuning: tables, class folders, 0/1 pair tables, WebDataset shards.

Sources (``load_rows`` picks by what it is given):

- a table from ``python -m training prepare`` (CSV/Parquet...: image, caption[, group]);
- a table with a label column (class-supervised) or a 0/1 pair-label column (pairs);
- a folder with one sub-folder per class; captions, when a loss needs them, are written from
  the class names with ``caption_template``;
- WebDataset tar shards (``data/{000..099}.tar``), streamed (:mod:`training.clip.stream`).

Every image that reaches the image tower is decoded pixels: :func:`check_pixels` fails,
naming the row, on anything else (a path string that was never read, say).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.errors import InputError
from backend.models.preprocess import preprocess_batch
from backend.models.registry import Preprocessing
from training.clip.augment import AugmentConfig, augment

_TRUE, _FALSE = {"1", "1.0", "true", "True"}, {"0", "0.0", "false", "False"}


@dataclass(frozen=True)
class Rows:
    """Training rows. ``images`` are files or decoded uint8 arrays; the rest is optional per source."""

    source: str
    images: tuple[Any, ...]
    captions: tuple[str, ...] | None = None
    classes: tuple[int, ...] | None = None
    class_names: tuple[str, ...] = ()
    targets: tuple[float, ...] | None = None
    hard_negatives: tuple[Any, ...] | None = None
    groups: tuple[str, ...] | None = None  # image identity for the duplicate-free sampler
    sha256: str = ""  # of the table file (or the folder listing)

    def __len__(self) -> int:
        return len(self.images)

    def sampler_keys(self) -> list[tuple[str, ...]]:
        """Per row, what must not repeat in a batch: its image and its caption."""
        ids = self.groups or tuple(str(i) for i in self.images)
        if self.captions is None:
            return [(g,) for g in ids]
        return list(zip(ids, self.captions, strict=True))

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "rows": len(self),
                "classes": list(self.class_names) or None}


def _sha(path: Path) -> str:
    from backend.models.bundle import sha256_file

    return sha256_file(path)


def load_rows(
    path: str | os.PathLike[str],
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
    pair_label_column: str | None = None,
    hard_negative_column: str | None = None,
    group_column: str | None = "group",
    caption_template: str = "a histopathology image of {}.",
) -> Rows:
    """Rows of a table or a class-folder tree (see the module docstring)."""
    from training.data.tables import read_table
    from training.evaluation.data import load_class_folders, resolve_image

    p = Path(path)
    if p.is_dir():
        data = load_class_folders(p)
        listing = "\n".join(f"{q.relative_to(p)}\0{q.stat().st_size}" for q in data.paths)
        class_captions = tuple(caption_template.format(data.class_names[c].replace("_", " ")) for c in data.labels)
        return Rows(str(p), data.paths, class_captions, data.labels, data.class_names,
                    sha256=hashlib.sha256(listing.encode()).hexdigest())
    df = read_table(p, [image_column])
    if len(df) == 0:
        raise InputError(f"{p}: the table has no rows")
    images = tuple(resolve_image(p, v, i) for i, v in enumerate(df[image_column]))
    captions = None
    if caption_column in df.columns:
        captions = tuple(df[caption_column])
        bad = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
        if bad:
            raise InputError(f"{p}: row {bad[0]}: {caption_column} must be non-empty text, got {captions[bad[0]]!r}")
    classes: tuple[int, ...] | None = None
    names: tuple[str, ...] = ()
    if label_column is not None:
        if label_column not in df.columns:
            raise InputError(f"{p}: no label column {label_column!r} (columns: {', '.join(map(str, df.columns))})")
        names = tuple(sorted({str(v) for v in df[label_column]}))
        classes = tuple(names.index(str(v)) for v in df[label_column])
        if captions is None:
            captions = tuple(caption_template.format(names[c].replace("_", " ")) for c in classes)
    targets = None
    if pair_label_column is not None:
        if pair_label_column not in df.columns:
            raise InputError(f"{p}: no pair-label column {pair_label_column!r}")
        values = [str(v) for v in df[pair_label_column]]
        bad = [i for i, v in enumerate(values) if v not in _TRUE | _FALSE]
        if bad:
            raise InputError(f"{p}: row {bad[0]}: {pair_label_column} must be 0 or 1, got {values[bad[0]]!r}")
        targets = tuple(1.0 if v in _TRUE else 0.0 for v in values)
    hard = None
    if hard_negative_column is not None:
        if hard_negative_column not in df.columns:
            raise InputError(f"{p}: no hard-negative column {hard_negative_column!r}")
        hard = tuple(resolve_image(p, v, i) for i, v in enumerate(df[hard_negative_column]))
    groups = tuple(str(g) for g in df[group_column]) if group_column and group_column in df.columns else None
    return Rows(str(p), images, captions, classes, names, targets, hard, groups, _sha(p))


def check_pixels(value: Any, where: str) -> np.ndarray:
    """``value`` as a uint8 (H, W, 3) array, or an :class:`InputError` naming ``where``."""
    if isinstance(value, (str, bytes, os.PathLike)):
        raise InputError(f"{where}: the image is a {type(value).__name__} ({str(value)[:80]!r}), not decoded pixels; "
                         "image paths must be read into pixels before the image tower (never encoded as text)")
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 3 or value.shape[-1] != 3:
        desc = f"array {value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise InputError(f"{where}: the image must be uint8 RGB pixels (H, W, 3), got {desc}")
    return value


def _pixels(value: Any, where: str) -> np.ndarray:
    from training.data.images import read_rgb

    if isinstance(value, Path):
        try:
            return read_rgb(value)
        except InputError as e:
            raise InputError(f"{where}: {e}") from e
    return check_pixels(value, where)


def to_model_input(rgb: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """One tile through the model's own preprocessing: float32 (3, S, S)."""
    return preprocess_batch(rgb[None], preprocessing, torch.device("cpu"))[0]


class RowDataset(torch.utils.data.Dataset):
    """Decoded, augmented, preprocessed rows; augmentation is seeded by (seed, epoch, row), so
    any worker count and any resume point give the same pixels."""

    def __init__(self, rows: Rows, preprocessing: Preprocessing, augment_config: AugmentConfig, seed: int) -> None:
        self.rows, self.preprocessing, self.augment, self.seed = rows, preprocessing, augment_config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, value: Any, i: int, rng: np.random.Generator) -> torch.Tensor:
        rgb = _pixels(value, f"{self.rows.source}: row {i}")
        return to_model_input(augment(rgb, self.augment, rng), self.preprocessing)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        r = self.rows
        item: dict[str, Any] = {"pixels": self._image(r.images[i], i, rng), "id": i}
        if r.captions is not None:
            item["caption"] = r.captions[i]
        if r.classes is not None:
            item["cls"] = r.classes[i]
        if r.targets is not None:
            item["target"] = r.targets[i]
        if r.hard_negatives is not None:
            item["hard_negative"] = self._image(r.hard_negatives[i], i, rng)
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"pixels": torch.stack([it["pixels"] for it in items]), "ids": [it["id"] for it in items]}
    if "caption" in items[0]:
        out["captions"] = [it["caption"] for it in items]
    if "cls" in items[0]:
        out["classes"] = torch.tensor([it["cls"] for it in items], dtype=torch.long)
    if "target" in items[0]:
        out["targets"] = torch.tensor([it["target"] for it in items], dtype=torch.float32)
    if "hard_negative" in items[0]:
        out["hard_negative"] = torch.stack([it["hard_negative"] for it in items])
    return out
