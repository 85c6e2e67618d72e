"""Perceptual hashing and near-duplicate grouping of images.

Quilt-style image-text data holds many near-identical images: consecutive video frames that
differ by a mouse cursor, re-encodings, resized copies. A DCT perceptual hash (pHash) maps each
image to 64 bits that survive such changes; images whose hashes differ in at most ``threshold``
bits are near-duplicates. Flat images (blank glass, white frames) have no structure for a
hash to capture -- their pHash bits are noise, and a cursor is all there is to see -- so they
are compared by mean colour instead. Near-duplicate pairs are joined transitively into groups
(connected components), so that no near-duplicate pair can end up in two different splits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

from backend.errors import InputError
from training.data.images import open_image

HASH_BITS = 64
_HASH_SIDE = 8  # 8x8 low-frequency DCT block -> 64 bits
_SAMPLE_SIDE = 32  # grayscale thumbnail the DCT runs on


@dataclass(frozen=True)
class DedupConfig:
    """When two images count as near-duplicates.

    Parameters
    ----------
    threshold
        Largest pHash Hamming distance (of 64 bits) still called a near-duplicate; 0 merges
        exact hash matches only. Resized, re-encoded and cursor-marked copies of tissue tiles
        measured 0-8 bits here; distinct tiles 20-38.
    flat_contrast
        Grey-level standard deviation of the 32x32 thumbnail below which an image is "flat"
        (blank glass, a white frame). A flat image's pHash bits are noise (its DCT terms are all
        near zero), so flat images are compared by mean colour instead, and never by hash.
    flat_tolerance
        Largest per-channel difference of mean RGB (0-255) for two flat images to be
        near-duplicates.
    """

    threshold: int = 10
    flat_contrast: float = 8.0
    flat_tolerance: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < HASH_BITS:
            raise InputError(f"dedup threshold: must be in [0, {HASH_BITS - 1}] bits, got {self.threshold}")
        if self.flat_contrast < 0 or self.flat_tolerance < 0:
            raise InputError(
                f"dedup flat_contrast / flat_tolerance: must be >= 0, got {self.flat_contrast}, {self.flat_tolerance}"
            )


@dataclass(frozen=True)
class Fingerprints:
    """Per-image pHash (uint64), thumbnail contrast (grey-level std) and mean RGB (N, 3)."""

    hashes: np.ndarray
    contrast: np.ndarray
    mean_rgb: np.ndarray

    def __len__(self) -> int:
        return int(self.hashes.shape[0])


def _thumbnail(image: np.ndarray | PILImage) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    rgb = image.convert("RGB")
    grey = np.asarray(rgb.convert("L").resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.LANCZOS), np.float64)
    mean = np.asarray(rgb.resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.BOX), np.float64).reshape(-1, 3).mean(0)
    return grey, mean


def _phash_of_thumbnail(grey: np.ndarray) -> int:
    from scipy.fft import dctn

    coeffs = dctn(grey, type=2, norm="ortho")[:_HASH_SIDE, :_HASH_SIDE].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int(np.packbits(bits).view(">u8")[0])


def phash(image: np.ndarray | PILImage) -> int:
    """64-bit DCT perceptual hash of an image.

    The image is reduced to a 32x32 grayscale thumbnail; bit i is set where the i-th of the 8x8
    lowest-frequency DCT coefficients exceeds their median (the DC term, which carries only the
    mean brightness, is left out of the median).

    Parameters
    ----------
    image
        A PIL image or a uint8 (H, W) / (H, W, 3) array.

    Returns
    -------
    int
        The hash as an unsigned 64-bit integer.
    """
    return _phash_of_thumbnail(_thumbnail(image)[0])


def fingerprint(image: np.ndarray | PILImage) -> tuple[int, float, np.ndarray]:
    """(pHash, thumbnail contrast, mean RGB) of a PIL image or uint8 array."""
    grey, mean = _thumbnail(image)
    return _phash_of_thumbnail(grey), float(grey.std()), mean


def fingerprint_file(path: str | os.PathLike[str]) -> tuple[int, float, np.ndarray]:
    """:func:`fingerprint` of an image file; :class:`InputError` naming it if unreadable."""
    with open_image(path) as im:
        im.draft("RGB", (4 * _SAMPLE_SIDE, 4 * _SAMPLE_SIDE))  # JPEG: decode at reduced scale
        return fingerprint(im)


def fingerprint_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Fingerprints:
    """Fingerprint many image files (decoding in ``workers`` threads), in input order."""
    n = len(paths)
    hashes = np.zeros(n, dtype=np.uint64)
    contrast = np.zeros(n, dtype=np.float32)
    mean_rgb = np.zeros((n, 3), dtype=np.float32)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (h, c, m) in enumerate(pool.map(fingerprint_file, paths)):
            hashes[i], contrast[i], mean_rgb[i] = h, c, m
            if progress is not None and (i + 1) % 256 == 0:
                progress(i + 1, n)
    if progress is not None:
        progress(n, n)
    return Fingerprints(hashes, contrast, mean_rgb)


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between 64-bit hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


def _close_pairs(
    values: np.ndarray, close: Callable[[np.ndarray, np.ndarray], np.ndarray], block_elements: int
) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs i < j with ``close(values[i], values[j])``, all against all in blocks."""
    n = values.shape[0]
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    step = max(1, block_elements // max(n, 1))
    for start in range(0, n, step):
        i, j = np.nonzero(close(values[start : start + step, None], values[None, :]))
        i = i + start
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
    return np.concatenate(rows), np.concatenate(cols)


def near_duplicate_groups(
    prints: Fingerprints, config: DedupConfig = DedupConfig(), *, block_elements: int = 1 << 24
) -> np.ndarray:
    """Group ids (0..G-1, numbered in order of first appearance) joining near-duplicates
    transitively (connected components of the near-duplicate graph).

    Non-flat images are near-duplicates when their pHashes differ in at most
    ``config.threshold`` bits; flat images when their mean colours differ by at most
    ``config.flat_tolerance``. Identical hashes are collapsed first; the distinct ones are
    compared all against all in blocks of at most ``block_elements`` distances (O(U^2) in the
    U distinct hashes: about a minute per 100k distinct images on one core).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(prints)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.flatnonzero(prints.contrast < config.flat_contrast)
    sharp = np.flatnonzero(prints.contrast >= config.flat_contrast)
    rows, cols = [], []
    # sharp images: by hash, on the distinct hashes only
    unique, inverse = np.unique(prints.hashes[sharp], return_inverse=True)
    inverse = inverse.ravel()
    rows.append(sharp)  # each sharp image joins its distinct-hash node (node ids offset by n)
    cols.append(n + inverse)
    if config.threshold > 0 and unique.size > 1:
        i, j = _close_pairs(unique, lambda a, b: hamming(a, b) <= config.threshold, block_elements)
        rows.append(n + i)
        cols.append(n + j)
    # flat images: by mean colour
    if flat.size > 1:
        i, j = _close_pairs(
            prints.mean_rgb[flat],
            lambda a, b: np.abs(a - b).max(axis=-1) <= config.flat_tolerance,
            block_elements,
        )
        rows.append(flat[i])
        cols.append(flat[j])
    r, c = np.concatenate(rows), np.concatenate(cols)
    size = n + unique.size
    graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(size, size))
    labels = connected_components(graph, directed=False)[1][:n]
    # renumber by first appearance so group ids follow the input order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    rank = np.empty(labels.max() + 1, dtype=np.int64)
    rank[labels[first[order]]] = np.arange(order.size)
    return rank[labels]


def group_images(
    paths: Sequence[str | Path],
    config: DedupConfig = DedupConfig(),
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Fingerprint image files and group near-duplicates: a group id per path (see
    :func:`near_duplicate_groups`)."""
    return near_duplicate_groups(fingerprint_files(paths, workers=workers, progress=progress), config)
