"""Pair labelled images with passages of an unpaired report corpus by CLIP similarity.

For each image the top-k passages (cosine similarity of unit-norm CLIP features) are found
with FAISS (an exact inner-product index). Passages are encoded and searched in chunks whose
top-k are merged, so memory holds one chunk of passage features plus (images x k) results,
never the whole corpus's features. With a floor, only pairs scoring at least the floor are
kept; an image whose best passage is below the floor gets no pair and is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError
from training.clipit.passages import Passage, SplitStats
from training.evaluation.data import LabelledImages

Encoder = Callable[[Sequence[Any]], np.ndarray]
PASSAGE_CHUNK = 65536  # passages encoded and searched at a time


@dataclass(frozen=True)
class PairConfig:
    """``k`` passages per image; ``floor``: the minimum cosine similarity kept (None: keep all)."""

    k: int = 1
    floor: float | None = None
    chunk: int = PASSAGE_CHUNK

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InputError(f"k (passages per image) must be an integer >= 1, got {self.k!r}")
        if self.floor is not None and not (-1.0 <= float(self.floor) <= 1.0):
            raise InputError(f"floor must be a cosine similarity in [-1, 1] (or none), got {self.floor!r}")
        if self.chunk < 1:
            raise InputError(f"chunk must be >= 1, got {self.chunk!r}")


@dataclass(frozen=True)
class Pairs:
    """Kept pairs as parallel arrays (row order: image, then rank), plus the inputs' sizes.

    ``best`` holds every image's best score (also for images without a kept pair).
    """

    image: np.ndarray  # (P,) int index into the images
    passage: np.ndarray  # (P,) int index into the passages
    score: np.ndarray  # (P,) float32
    rank: np.ndarray  # (P,) int, 0 = best
    best: np.ndarray  # (N,) float32
    n_images: int
    n_passages: int


def _normalised(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"{what} features must be 2-D (rows, dim), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        bad = int(np.flatnonzero((norm[:, 0] == 0) | ~np.isfinite(norm[:, 0]))[0])
        raise InputError(f"{what} row {bad}: feature vector is zero or not finite")
    return x / norm


def top_k(image_feats: np.ndarray, passage_chunks: Callable[[], Any], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` passages per image over passage feature chunks, merged.

    Parameters
    ----------
    image_feats
        (N, D) image features (normalised here).
    passage_chunks
        Returns an iterable of (offset, (M_i, D) features) chunks covering the passages.

    Returns
    -------
    scores, indices
        (N, k') each, best first, with ``k' = min(k, number of passages)``.
    """
    import faiss

    q = _normalised(image_feats, "image")
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for offset, feats in passage_chunks():
        p = _normalised(feats, "passage")
        if p.shape[1] != q.shape[1]:
            raise InputError(f"passage features have dimension {p.shape[1]}, image features {q.shape[1]}")
        index = faiss.IndexFlatIP(p.shape[1])
        index.add(p)
        s, i = index.search(q, min(k, len(p)))
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, i + offset], axis=1)
        # stable sort on -score: ties keep the earlier passage first
        order = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(s_all, order, axis=1)
        best_i = np.take_along_axis(i_all, order, axis=1)
    return best_s, best_i


def select(scores: np.ndarray, idx: np.ndarray, config: PairConfig, n_passages: int) -> Pairs:
    """Kept pairs from ``top_k``'s (N, k) scores and indices: all, or those at least the floor."""
    keep = np.ones(scores.shape, bool) if config.floor is None else scores >= config.floor
    rows, ranks = np.nonzero(keep)  # row-major: image, then rank
    return Pairs(image=rows.astype(np.int64), passage=idx[rows, ranks].astype(np.int64),
                 score=scores[rows, ranks].astype(np.float32), rank=ranks.astype(np.int64),
                 best=scores[:, 0].astype(np.float32), n_images=len(scores), n_passages=n_passages)


def pair_features(image_feats: np.ndarray, passage_feats: np.ndarray, config: PairConfig = PairConfig()) -> Pairs:
    """Pairs from (N, D) image and (M, D) passage features (searched in chunks of ``config.chunk``)."""
    if len(passage_feats) == 0:
        raise InputError("no passages to pair with: the corpus is empty")

    def chunks() -> Any:
        return ((s, passage_feats[s : s + config.chunk]) for s in range(0, len(passage_feats), config.chunk))

    scores, idx = top_k(image_feats, chunks, config.k)
    return select(scores, idx, config, len(passage_feats))


def pair_images(
    data: LabelledImages,
    passages: Sequence[Passage],
    *,
    encode_images: Encoder,
    encode_texts: Encoder,
    config: PairConfig = PairConfig(),
) -> Pairs:
    """Pair every image of ``data`` with its top-k passages.

    Parameters
    ----------
    encode_images
        Image paths -> (N, D) features (e.g. ``training.evaluation.features.image_features``
        bound to a model); tests pass constructed vectors.
    encode_texts
        Passage texts -> (M, D) features, called once per chunk of ``config.chunk`` passages.
    """
    if not passages:
        raise InputError("no passages to pair with: the corpus is empty")
    if len(data) == 0:
        raise InputError(f"{data.source}: no images to pair")
    img = encode_images(list(data.paths))
    if len(img) != len(data):
        raise InputError(f"image encoder returned {len(img)} rows for {len(data)} images")
    texts = [p.text for p in passages]

    def chunks() -> Any:
        for s in range(0, len(texts), config.chunk):
            feats = encode_texts(texts[s : s + config.chunk])
            if len(feats) != len(texts[s : s + config.chunk]):
                raise InputError(f"text encoder returned {len(feats)} rows for {len(texts[s : s + config.chunk])} passages")
            yield s, feats

    scores, idx = top_k(img, chunks, config.k)
    return select(scores, idx, config, len(passages))


def pairs_table(pairs: Pairs, data: LabelledImages, passages: Sequence[Passage]) -> Any:
    """The pairs as a DataFrame: image, label, passage_id, text, score, rank, report."""
    import pandas as pd

    return pd.DataFrame({
        "image": [str(data.paths[i]) for i in pairs.image],
        "label": [data.class_names[data.labels[i]] for i in pairs.image],
        "passage_id": [passages[j].passage_id for j in pairs.passage],
        "text": [passages[j].text for j in pairs.passage],
        "score": pairs.score.astype(np.float64),
        "rank": pairs.rank,
        "report": [passages[j].report for j in pairs.passage],
    })


def pairing_report(pairs: Pairs, data: LabelledImages, passages: Sequence[Passage], split: SplitStats,
                   config: PairConfig, top: int = 10) -> dict[str, Any]:
    """Counts, the share of images below the floor, and how many images each passage serves."""
    below = int(np.sum(pairs.best < config.floor)) if config.floor is not None else 0
    served = np.bincount(pairs.passage, minlength=len(passages)) if len(pairs.passage) else np.zeros(len(passages), int)
    used = served[served > 0]
    order = np.argsort(-served, kind="stable")[: min(top, int((served > 0).sum()))]
    top_passages = []
    for j in order:
        labels = [data.class_names[data.labels[i]] for i in pairs.image[pairs.passage == j]]
        top_passages.append({"passage_id": passages[j].passage_id, "images": int(served[j]),
                             "labels": {lab: labels.count(lab) for lab in sorted(set(labels))},
                             "text": passages[j].text})
    scores = pairs.score
    return {
        "images": pairs.n_images,
        "classes": list(data.class_names),
        "reports": split.reports,
        "passages": split.passages,
        "reports_split": split.reports_split,
        "sentences_split_at_words": split.sentences_split_at_words,
        "words_over_context": split.words_over_context,
        "k": config.k,
        "floor": config.floor,
        "pairs": int(len(scores)),
        "images_below_floor": below,
        "share_below_floor": below / pairs.n_images if pairs.n_images else 0.0,
        "images_below_floor_examples": [str(data.paths[i]) for i in np.flatnonzero(pairs.best < config.floor)[:10]]
        if config.floor is not None else [],
        "score": {"min": float(scores.min()), "median": float(np.median(scores)), "max": float(scores.max())}
        if len(scores) else None,
        "passages_used": int(len(used)),
        "passages_unused": int(len(passages) - len(used)),
        "images_per_passage": {"max": int(used.max()), "median": float(np.median(used))} if len(used) else None,
        "top_passages": top_passages,
    }


def write_histogram(scores: np.ndarray, path: str | Path, floor: float | None = None, bins: int = 40) -> Path:
    """A histogram PNG of pair scores (Pillow drawing; matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    from backend.atomic import atomic_path

    w, h, left, bottom, top_m = 640, 360, 50, 40, 30
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    scores = np.asarray(scores, np.float64)
    lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
    if floor is not None:
        lo, hi = min(lo, floor), max(hi, floor)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    pw, ph = w - left - 20, h - bottom - top_m
    peak = max(int(counts.max()) if len(counts) else 0, 1)

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            d.rectangle([x_of(a), h - bottom - c / peak * ph, x_of(b) - 1, h - bottom], fill=(70, 110, 180))
    d.line([left, h - bottom, w - 20, h - bottom], fill="black")
    d.line([left, top_m, left, h - bottom], fill="black")
    for v in np.linspace(lo, hi, 5):
        d.text((x_of(v) - 12, h - bottom + 6), f"{v:.2f}", fill="black")
    d.text((4, top_m - 4), str(peak), fill="black")
    d.text((left, 8), f"pair scores (cosine), {len(scores)} pairs", fill="black")
    if floor is not None:
        d.line([x_of(floor), top_m, x_of(floor), h - bottom], fill=(200, 30, 30), width=2)
        d.text((x_of(floor) + 4, top_m), f"floor {floor:.2f}", fill=(200, 30, 30))
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path
