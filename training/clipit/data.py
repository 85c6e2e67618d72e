"""CLIP-IT training data: labelled images (whole, or cut into patches) and their paired passages.

Labelled images come from ``training.evaluation.data`` (class folders or a table). An image
holding at least two tiles of the classifier's tile size (BACH's 2048 x 1536 photographs at
224 px) is cut into a centred grid of non-overlapping tiles, each inheriting the image's label;
smaller images (PCam's 96 px, CRC's 224 px tiles) are one input each, resized by the model's
preprocessing. Predictions of an image's patches are averaged into one per image
(:func:`per_image`), so metrics are always per image.

The pairs table of ``python -m training pair`` gives each training image its passages (an image
below the pairing floor has none: it trains on cross-entropy only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.errors import InputError
from backend.models.registry import Preprocessing
from training.clip.augment import AugmentConfig, augment
from training.clip.data import to_model_input
from training.evaluation.data import LabelledImages, load_labelled, resolve_image

Box = tuple[int, int, int]  # x, y, side of a square patch


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header; errors name the file."""
    from training.data.images import open_image

    with open_image(path) as im:
        return im.size


def patch_grid(width: int, height: int, tile: int) -> list[Box | None]:
    """The patches of one image: a centred grid of ``tile`` squares when it holds at least two,
    else ``[None]`` (the whole image is one input)."""
    nx, ny = width // tile, height // tile
    if nx * ny < 2:
        return [None]
    x0, y0 = (width - nx * tile) // 2, (height - ny * tile) // 2
    return [(x0 + i * tile, y0 + j * tile, tile) for j in range(ny) for i in range(nx)]


def default_tile_size(sizes: Sequence[tuple[int, int]], model_input: int) -> int:
    """The images' own side when they are all squares of one size (tiles), else the model's input size."""
    kinds = set(sizes)
    if len(kinds) == 1:
        (w, h), = kinds
        if w == h:
            return int(w)
    return int(model_input)


@dataclass(frozen=True)
class ImageSet:
    """Labelled images and the model inputs cut from them: ``items[k] = (image index, box or None)``."""

    images: LabelledImages
    items: tuple[tuple[int, Box | None], ...]
    tile_size: int

    @property
    def n_patched(self) -> int:
        """How many images were cut into patches."""
        return len({i for i, box in self.items if box is not None})

    def record(self) -> dict[str, Any]:
        counts = Counter(self.images.labels)
        return {"source": str(self.images.source), "images": len(self.images), "inputs": len(self.items),
                "images_patched": self.n_patched,
                "per_class": {n: counts.get(i, 0) for i, n in enumerate(self.images.class_names)}}


def cut(images: LabelledImages, tile_size: int, sizes: Sequence[tuple[int, int]] | None = None) -> ImageSet:
    """The :class:`ImageSet` of ``images`` at ``tile_size`` (image sizes read from headers unless given)."""
    sizes = sizes if sizes is not None else [image_size(p) for p in images.paths]
    items = tuple((i, box) for i, (w, h) in enumerate(sizes) for box in patch_grid(w, h, tile_size))
    return ImageSet(images, items, tile_size)


def load_images(path: Path, class_names: Sequence[str] | None, *, image_column: str, label_column: str,
                what: str) -> LabelledImages:
    """A labelled set whose labels are indices into ``class_names`` (the training classes)."""
    data = load_labelled(path, image_column=image_column, label_column=label_column)
    if class_names is None or tuple(data.class_names) == tuple(class_names):
        return data
    index = {n: i for i, n in enumerate(class_names)}
    unknown = sorted(set(data.class_names) - set(index))
    if unknown:
        raise InputError(f"{what} {path}: class(es) {unknown} are not among the training classes {list(class_names)}")
    labels = tuple(index[data.class_names[y]] for y in data.labels)
    return LabelledImages(data.paths, labels, tuple(class_names), data.source)


@dataclass(frozen=True)
class Pairs:
    """Passages paired with training images: unique ``texts``, and per pairs-table row its
    text and image (indices into ``texts`` and the training images)."""

    source: Path
    texts: tuple[str, ...]
    row_text: np.ndarray  # (R,) int
    row_image: np.ndarray  # (R,) int
    row_label: np.ndarray  # (R,) int, the image's class

    def image_texts(self, n_images: int) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(n_images)]
        for t, i in zip(self.row_text.tolist(), self.row_image.tolist(), strict=True):
            out[i].append(t)
        return out


def load_pairs(path: Path, train: LabelledImages | None, *, image_column: str = "image", label_column: str = "label",
               text_column: str = "text") -> tuple[LabelledImages, Pairs]:
    """The pairs table, joined to the labelled training images.

    Without ``train`` the training images are the table's own (each with its label). With it,
    every row must name one of its images, with that image's label.
    """
    import pandas as pd

    from training.data.tables import read_table

    df = read_table(path, [image_column, label_column, text_column])
    if len(df) == 0:
        raise InputError(f"{path}: the pairs table has no rows")
    images = [resolve_image(path, v, r).resolve() for r, v in enumerate(df[image_column])]
    for r, (t, lab) in enumerate(zip(df[text_column], df[label_column], strict=True)):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{path}: row {r}: {text_column!r} must be a non-empty passage, got {t!r}")
        if pd.isna(lab) or not str(lab).strip():
            raise InputError(f"{path}: row {r}: {label_column!r} is empty")
    labels = [str(v) for v in df[label_column]]
    if train is None:
        first: dict[Path, int] = {}
        for r, p in enumerate(images):
            first.setdefault(p, r)
        names = tuple(sorted(set(labels)))
        if len(names) < 2:
            raise InputError(f"{path}: the pairs table names {len(names)} class(es) {list(names)}; a classifier needs 2+")
        paths = tuple(first)
        train = LabelledImages(paths, tuple(names.index(labels[first[p]]) for p in paths), names, path)
    where = {p.resolve(): i for i, p in enumerate(train.paths)}
    row_image = np.zeros(len(df), np.int64)
    for r, (p, lab) in enumerate(zip(images, labels, strict=True)):
        if p not in where:
            raise InputError(f"{path}: row {r}: image {p} is not one of the training images ({train.source}); "
                             "pair the same images you train on")
        i = where[p]
        if train.class_names[train.labels[i]] != lab:
            raise InputError(f"{path}: row {r}: image {p} has label {lab!r} here but "
                             f"{train.class_names[train.labels[i]]!r} in {train.source}")
        row_image[r] = i
    texts = list(dict.fromkeys(str(t) for t in df[text_column]))
    index = {t: k for k, t in enumerate(texts)}
    row_text = np.array([index[str(t)] for t in df[text_column]], np.int64)
    row_label = np.array([train.labels[i] for i in row_image], np.int64)
    return train, Pairs(Path(path), tuple(texts), row_text, row_image, row_label)


class PatchDataset(torch.utils.data.Dataset):
    """Decoded, cropped, augmented, preprocessed inputs of an :class:`ImageSet`.

    Augmentation is seeded by (seed, epoch, item), so any worker count and any resume point
    give the same pixels. The last decoded image is kept, as an image's patches come in a row
    at evaluation.
    """

    def __init__(self, data: ImageSet, preprocessing: Preprocessing, augment_config: AugmentConfig, seed: int) -> None:
        self.data, self.preprocessing, self.augment, self.seed = data, preprocessing, augment_config, seed
        self.epoch = 0
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.data.items)

    def _rgb(self, image: int) -> np.ndarray:
        from training.data.images import read_rgb

        if self._last is None or self._last[0] != image:
            self._last = (image, read_rgb(self.data.images.paths[image]))
        return self._last[1]

    def __getitem__(self, k: int) -> dict[str, Any]:
        image, box = self.data.items[k]
        rgb = self._rgb(image)
        if box is not None:
            x, y, s = box
            rgb = rgb[y : y + s, x : x + s]
        rng = np.random.default_rng([self.seed, self.epoch, k])
        pixels = to_model_input(augment(np.ascontiguousarray(rgb), self.augment, rng), self.preprocessing)
        return {"pixels": pixels, "label": self.data.images.labels[image], "image": image}


def per_image(item_probs: np.ndarray, data: ImageSet) -> np.ndarray:
    """(N_images, C) mean of each image's (N_items, C) patch probabilities."""
    idx = np.array([i for i, _ in data.items], np.int64)
    sums = np.zeros((len(data.images), item_probs.shape[1]), np.float64)
    np.add.at(sums, idx, item_probs)
    counts = np.bincount(idx, minlength=len(data.images))
    if np.any(counts == 0):
        raise InputError(f"{data.images.source}: image {data.images.paths[int(np.argmin(counts))]} has no input")
    return (sums / counts[:, None]).astype(np.float32)
