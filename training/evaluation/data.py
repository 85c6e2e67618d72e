"""Evaluation inputs: labelled images (class folders or a table) and class-name files.

A labelled image set is either a folder with one sub-folder per class (``root/CLASS/*.png``;
the sub-folder names are the labels, sorted) or a table with an image-path column and a
label column (paths relative to the table's folder). Class names for zero-shot come from a
file: a list of names, an object ``label -> [synonyms]``, a text file (``name: syn, syn``), or
CONCH's prompt file ``{"classnames": {label: [phrases...]}, "templates": ["... CLASSNAME ..."]}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backend.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})


@dataclass(frozen=True)
class LabelledImages:
    """Image files with integer labels into ``class_names``; ``source`` is the folder or table."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    source: Path

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> LabelledImages:
        return LabelledImages(tuple(self.paths[i] for i in idx), tuple(self.labels[i] for i in idx),
                              self.class_names, self.source)


def align_classes(data: LabelledImages, reference: LabelledImages, role: str) -> LabelledImages:
    """``data`` relabelled onto ``reference``'s classes, matched by name (not by index).

    A set may hold fewer classes than the reference (a validation folder with 2 of 3 classes):
    its labels are mapped to the reference's indices by class name.

    Parameters
    ----------
    data
        The set to relabel (test or validation images).
    reference
        The set whose class list is authoritative (the training images).
    role
        What ``data`` is (``"--val"``, ``"--test"``), named in the error.

    Raises
    ------
    InputError
        ``data`` has classes the reference lacks; the message names both class sets.
    """
    index = {name: i for i, name in enumerate(reference.class_names)}
    unknown = [name for name in data.class_names if name not in index]
    if unknown:
        raise InputError(
            f"{role} {data.source}: class(es) {unknown} are not among the training classes; {role} has "
            f"{list(data.class_names)}, --train {reference.source} has {list(reference.class_names)} "
            "(classes are matched by name)"
        )
    labels = tuple(index[data.class_names[i]] for i in data.labels)
    return LabelledImages(data.paths, labels, reference.class_names, data.source)


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_class_folders(root: str | os.PathLike[str]) -> LabelledImages:
    """``root/CLASS/*.{png,jpg,tif,...}`` as a labelled set (classes sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of class folders")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise InputError(f"{root}: found {len(classes)} class folder(s); needs one sub-folder per class, at least 2")
    paths, labels = [], []
    for i, folder in enumerate(classes):
        files = image_files(folder)
        if not files:
            raise InputError(f"{folder}: class folder without images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [i] * len(files)
    return LabelledImages(tuple(paths), tuple(labels), tuple(p.name for p in classes), root)


def load_labelled_table(path: str | os.PathLike[str], image_column: str = "image",
                        label_column: str = "label") -> LabelledImages:
    """A table of image paths (relative to the table) and class labels (sorted as strings)."""
    from training.data.tables import read_table

    path = Path(path)
    df = read_table(path, [image_column, label_column])
    if len(df) == 0:
        raise InputError(f"{path}: the table has no rows")
    names = sorted({str(v) for v in df[label_column]})
    index = {n: i for i, n in enumerate(names)}
    paths = tuple(resolve_image(path, v, row) for row, v in enumerate(df[image_column]))
    return LabelledImages(paths, tuple(index[str(v)] for v in df[label_column]), tuple(names), path)


def resolve_image(table: Path, value: object, row: int) -> Path:
    """An image path from a table cell, relative to the table's folder; errors name the row."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{table}: row {row}: image must be a file path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else table.parent / p


def load_labelled(path: str | os.PathLike[str], image_column: str = "image", label_column: str = "label") -> LabelledImages:
    """Class folders (a directory) or a labelled table (a file)."""
    p = Path(path)
    return load_class_folders(p) if p.is_dir() else load_labelled_table(p, image_column, label_column)


@dataclass(frozen=True)
class ClassSpec:
    """Zero-shot classes: per label (as the data names it) the phrases that describe it."""

    labels: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...] | None  # None: the backend's default templates


def _templates(values: object, where: Path) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(t, str) for t in values):
        raise InputError(f"{where}: 'templates' must be a list of strings")
    # CONCH writes the class slot as CLASSNAME; the backend's templates use {}
    return tuple(t.replace("CLASSNAME", "{}") for t in values)


def load_class_spec(path: str | os.PathLike[str] | None, labels: Sequence[str],
                    templates_file: str | os.PathLike[str] | None = None) -> ClassSpec:
    """Class phrases for ``labels`` (the data's class names) from a class-name file.

    Without a file each label is its own phrase (underscores read as spaces). A file must name
    every label of the data; phrases of a label are its synonyms (CONCH: its list; a label that
    is also meant as a phrase must be listed in it).
    """
    from backend.cli.slide_tasks import parse_labels

    labels = tuple(labels)
    templates: tuple[str, ...] | None = None
    if templates_file is not None:
        tp = Path(templates_file)
        try:
            text = tp.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"{tp}: cannot read the templates file ({e.strerror or e})") from e
        if tp.suffix.lower() == ".json":
            try:
                templates = _templates(json.loads(text), tp)
            except json.JSONDecodeError as e:
                raise InputError(f"{tp}: not valid JSON ({e.msg} at line {e.lineno})") from e
        else:
            templates = tuple(t.strip().replace("CLASSNAME", "{}") for t in text.splitlines() if t.strip())
    if path is None:
        return ClassSpec(labels, tuple((lab.replace("_", " "),) for lab in labels), templates)
    path = Path(path)
    mapping: dict[str, tuple[str, ...]] = {}
    conch = None
    if path.suffix.lower() == ".json":
        try:
            conch = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: not a readable JSON class file ({e})") from e
    if isinstance(conch, dict) and "classnames" in conch:
        names = conch["classnames"]
        if not isinstance(names, dict) or not all(isinstance(v, list) and v for v in names.values()):
            raise InputError(f"{path}: 'classnames' must map each label to a non-empty list of phrases")
        mapping = {str(k): tuple(str(s) for s in v) for k, v in names.items()}
        if "templates" in conch and templates is None:
            templates = _templates(conch["templates"], path)
    else:
        names_, synonyms = parse_labels(None, str(path))
        syn = synonyms or tuple(() for _ in names_)
        mapping = {n: (n.replace("_", " "), *s) for n, s in zip(names_, syn, strict=True)}
    missing = [lab for lab in labels if lab not in mapping]
    if missing:
        raise InputError(f"{path}: no phrases for the data's class(es) {missing}; the file names {sorted(mapping)}")
    return ClassSpec(labels, tuple(mapping[lab] for lab in labels), templates)
