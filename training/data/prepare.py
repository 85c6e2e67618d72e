"""Data preparation as in HistoClipCap: near-duplicate removal, caption explosion, splits.

``python -m training prepare TABLE --out DIR [--image-column image --caption-column caption]``

1. Rows naming the same image, and images that are near-duplicates of each other (a perceptual
   hash with a tunable threshold, :mod:`training.data.phash`), are merged into one group whose
   captions form a list (order kept, exact repeats dropped). The group's first image stands for
   it.
2. Groups are split into train / val / test at random (seeded), so no image -- nor any
   near-duplicate of it -- is in two splits.
3. Each split is exploded into one row per caption: ``image, caption, group``.

Outputs in ``DIR``: ``train.<fmt>``, ``val.<fmt>``, ``test.<fmt>`` (empty splits are still
written), ``duplicates.<fmt>`` (every input image, its group and its group's representative)
and ``prepare.json`` (counts and settings).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.atomic import atomic_write_text
from backend.errors import InputError
from training.data.phash import DedupConfig, group_images
from training.data.tables import TableFormat, read_table, write_table

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of :func:`prepare` (see the module docstring and ``--help``)."""

    table: Path
    out_dir: Path
    image_column: str = "image"
    caption_column: str = "caption"
    image_root: Path | None = None
    dedup: DedupConfig = field(default_factory=DedupConfig)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    output_format: TableFormat = TableFormat.PARQUET
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise InputError(f"{name}: must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise InputError(
                f"val_fraction + test_fraction: must leave images for training, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        object.__setattr__(self, "output_format", TableFormat(self.output_format))


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare` did: counts and the files it wrote."""

    rows_in: int
    empty_captions_dropped: int
    images: int
    groups: int
    images_merged: int
    split_images: dict[str, int]
    split_rows: dict[str, int]
    files: dict[str, str]


def normalise_captions(value: Any) -> list[str]:
    """A cell's captions as a list of non-empty stripped strings.

    A list (JSON, Parquet) gives several captions; so does a string holding a JSON list
    (``'["a", "b"]'`` in a CSV cell). Anything empty gives none.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return normalise_captions(parsed)
        return [text] if text else []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [c for v in value for c in normalise_captions(v)]
    return normalise_captions(str(value))


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def merge_captions(images: Sequence[str], captions: Sequence[list[str]], groups: np.ndarray) -> list[dict[str, Any]]:
    """One record per group: its first image, every image in it, and its captions (in order,
    exact repeats dropped)."""
    merged: dict[int, dict[str, Any]] = {}
    for image, caps, g in zip(images, captions, groups.tolist()):
        rec = merged.setdefault(g, {"group": g, "image": image, "images": [], "captions": []})
        rec["images"].append(image)
        rec["captions"].extend(caps)
    for rec in merged.values():
        rec["images"] = _unique(rec["images"])
        rec["captions"] = _unique(rec["captions"])
    return [merged[g] for g in sorted(merged)]


def explode(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per caption: ``{"image", "caption", "group"}``."""
    return [{"image": r["image"], "caption": c, "group": r["group"]} for r in records for c in r["captions"]]


def split_groups(n_groups: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split index per group (0 train, 1 val, 2 test), shuffled with ``seed``. A non-zero
    fraction gets at least one group when there are enough groups to leave training some."""
    order = np.random.default_rng(seed).permutation(n_groups)
    n_val = int(round(val_fraction * n_groups))
    n_test = int(round(test_fraction * n_groups))
    if val_fraction > 0 and n_val == 0 and n_groups >= 3:
        n_val = 1
    if test_fraction > 0 and n_test == 0 and n_groups >= 3:
        n_test = 1
    out = np.zeros(n_groups, dtype=np.int64)
    out[order[:n_val]] = 1
    out[order[n_val : n_val + n_test]] = 2
    return out


def _resolve_images(df: Any, config: PrepareConfig) -> list[str]:
    root = Path(config.image_root) if config.image_root is not None else Path(config.table).parent
    paths = []
    for value in df[config.image_column].tolist():
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{config.table}: empty or non-text value {value!r} in column {config.image_column!r}")
        p = Path(value.strip()).expanduser()
        paths.append(str((p if p.is_absolute() else root / p).resolve()))
    missing = [p for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(
            f"{config.table}: {len(missing)} image(s) in column {config.image_column!r} not found: {shown} "
            f"(relative paths are resolved against {root}; set --image-root)"
        )
    return paths


def prepare(config: PrepareConfig, progress: Callable[[int, int], None] | None = None) -> PrepareResult:
    """Deduplicate, split and explode an image-caption table (see the module docstring).

    Parameters
    ----------
    config
        Input table, columns, dedup settings, split fractions and output directory.
    progress
        Called with (images fingerprinted, total) while hashing.

    Returns
    -------
    PrepareResult
    """
    import pandas as pd

    df = read_table(config.table, [config.image_column, config.caption_column])
    paths = _resolve_images(df, config)
    captions = [normalise_captions(v) for v in df[config.caption_column].tolist()]
    empty = sum(1 for c in captions if not c)

    # same path on several rows: one image; then near-duplicates among distinct images
    distinct = list(dict.fromkeys(paths))
    groups_of_distinct = group_images(distinct, config.dedup, workers=config.workers, progress=progress)
    group_of = dict(zip(distinct, groups_of_distinct.tolist()))
    groups = np.array([group_of[p] for p in paths], dtype=np.int64)
    merged = merge_captions(paths, captions, groups)
    records = [r for r in merged if r["captions"]]

    which = split_groups(len(records), config.val_fraction, config.test_fraction, config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = config.output_format.value
    files: dict[str, str] = {}
    split_images: dict[str, int] = {}
    split_rows: dict[str, int] = {}
    for index, name in enumerate(SPLITS):
        chosen = [r for r, s in zip(records, which.tolist()) if s == index]
        rows = pd.DataFrame(explode(chosen), columns=["image", "caption", "group"])
        files[name] = str(write_table(rows, out / f"{name}.{ext}"))
        split_images[name], split_rows[name] = len(chosen), len(rows)
    dup_rows = [{"image": img, "group": r["group"], "representative": r["image"]}
                for r in merged for img in r["images"]]
    files["duplicates"] = str(write_table(pd.DataFrame(dup_rows, columns=["image", "group", "representative"]),
                                          out / f"duplicates.{ext}"))
    result = PrepareResult(
        rows_in=len(df),
        empty_captions_dropped=empty,
        images=len(distinct),
        groups=len(merged),
        images_merged=len(distinct) - len(merged),
        split_images=split_images,
        split_rows=split_rows,
        files=files,
    )
    summary = {"settings": asdict(config), "result": asdict(result)}
    atomic_write_text(out / "prepare.json", json.dumps(summary, indent=2, default=str))  # paths as text
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training prepare",
        description="Deduplicate near-identical images (merging their captions), split by image, "
        "and explode to one row per caption.",
    )
    p.add_argument("table", type=Path, help="input table: .csv, .tsv, .json, .jsonl or .parquet")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--image-column", default="image", help="column with image paths (default: image)")
    p.add_argument("--caption-column", default="caption", help="column with a caption or a list of captions")
    p.add_argument("--image-root", type=Path, default=None,
                   help="directory relative image paths start from (default: the table's directory)")
    p.add_argument("--threshold", type=int, default=DedupConfig.threshold,
                   help="near-duplicate pHash distance in bits, of 64 (default: %(default)s; 0: exact only)")
    p.add_argument("--flat-contrast", type=float, default=DedupConfig.flat_contrast,
                   help="thumbnail grey-level std below which an image is flat and compared by mean colour")
    p.add_argument("--flat-tolerance", type=float, default=DedupConfig.flat_tolerance,
                   help="max mean-colour difference (0-255) of flat near-duplicates")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=[f.value for f in TableFormat], default=TableFormat.PARQUET.value)
    p.add_argument("--workers", type=int, default=2, help="threads decoding images while hashing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training prepare``; returns the exit code (errors propagate to the caller)."""
    args = build_parser().parse_args(argv)
    config = PrepareConfig(
        table=args.table,
        out_dir=args.out,
        image_column=args.image_column,
        caption_column=args.caption_column,
        image_root=args.image_root,
        dedup=DedupConfig(args.threshold, args.flat_contrast, args.flat_tolerance),
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        output_format=TableFormat(args.format),
        workers=args.workers,
    )
    r = prepare(config)
    print(
        f"prepare: {r.rows_in} rows, {r.images} images -> {r.groups} after merging {r.images_merged} "
        f"near-duplicates; rows per split {r.split_rows}; {r.empty_captions_dropped} rows without captions; "
        f"wrote {config.out_dir}"
    )
    return 0
