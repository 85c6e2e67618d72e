"""``python -m training eval slide-zeroshot``: slide-level zero-shot against slide labels.

Slides (a CSV of ``path,label``; paths relative to the CSV) are answered one by one by
:meth:`backend.local.LocalBackend.slide_zero_shot` (MI-Zero pooling over the cached tile
embeddings: slides already embedded read no pixel), and scored as the published slide-level
tables are (CONCH's ``run_mizero``): balanced accuracy, macro F1 and a confusion matrix from the
predicted classes, AUROC from the pooled probabilities (binary: the second class's; more
classes: one-vs-one macro average), all by scikit-learn. The result has the schema of every
evaluation (:mod:`training.evaluation.results`), so ``eval merge`` puts it in a leaderboard.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError
from training.evaluation.data import ClassSpec


@dataclass(frozen=True)
class LabelledSlides:
    """Slides with their labels: ``paths``, ``labels`` (indices into ``class_names``)."""

    source: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def load_slide_labels(path: str | os.PathLike[str], path_column: str = "path",
                      label_column: str = "label") -> LabelledSlides:
    """Read a ``path,label`` CSV (paths relative to it); classes are the sorted labels."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"{path}: cannot read the slide labels ({e.strerror or e})") from e
    if not rows:
        raise InputError(f"{path}: no slides listed (expected a CSV with columns {path_column},{label_column})")
    missing = [c for c in (path_column, label_column) if c not in rows[0]]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r}; its columns are {sorted(rows[0])}")
    slides, names = [], []
    for n, row in enumerate(rows, 2):
        value, label = (row[path_column] or "").strip(), (row[label_column] or "").strip()
        if not value or not label:
            raise InputError(f"{path}: line {n} has an empty {path_column if not value else label_column}")
        p = Path(value) if Path(value).is_absolute() else path.parent / value
        if not p.exists():
            raise InputError(f"{path}: line {n}: slide {value!r} not found (paths are relative to the CSV)")
        slides.append(str(p))
        names.append(label)
    classes = tuple(sorted(set(names)))
    if len(classes) < 2:
        raise InputError(f"{path}: needs slides of at least 2 classes, has only {list(classes)}")
    return LabelledSlides(path, tuple(slides), tuple(classes.index(n) for n in names), classes)


def auroc(probs: np.ndarray, y: np.ndarray) -> float:
    """CONCH's slide AUROC: binary on the second class's probability, else one-vs-one macro;
    NaN when a class has no slide (AUROC is undefined then)."""
    from sklearn.metrics import roc_auc_score

    try:
        if probs.shape[1] == 2:
            return float(roc_auc_score(y, probs[:, 1]))
        return float(roc_auc_score(y, probs, multi_class="ovo", average="macro", labels=list(range(probs.shape[1]))))
    except ValueError:
        return float("nan")


def run_slide_zeroshot(backend: Any, model_name: str, data: LabelledSlides, spec: ClassSpec, *,
                       pooling: str = "topk", k: int = 50, fraction: float = 0.05, tiles: Any = None,
                       progress: Any = None) -> dict[str, Any]:
    """Answer every slide and score the answers (see the module docstring)."""
    from backend import api
    from backend.slides import slide_fingerprint
    from training.evaluation.metrics import classification_metrics
    from training.evaluation.results import make_result, model_record

    names = tuple(p[0] for p in spec.phrases)
    synonyms = tuple(tuple(p[1:]) for p in spec.phrases)
    request = api.SlideZeroShotRequest(api.SlideRef(""), model_name, names, synonyms, tuple(spec.templates or ()),
                                       pooling=pooling, k=k, fraction=fraction, evidence=0, tiles=tiles)
    probs, per_slide = [], []
    for i, path in enumerate(data.paths):
        r = backend.slide_zero_shot(replace(request, slide=api.SlideRef(path)))
        probs.append(r.probabilities)
        per_slide.append({"slide": r.slide_name, "label": spec.labels[data.labels[i]],
                          "predicted": spec.labels[int(np.argmax(r.probabilities))],
                          "probabilities": dict(zip(spec.labels, r.probabilities, strict=True))})
        if progress is not None:
            progress(api.Progress(i + 1, len(data.paths), f"slide {Path(path).name}"))
    scores, y = np.asarray(probs, dtype=np.float64), np.asarray(data.labels)
    m = classification_metrics(scores, y, spec.labels, ks=(1,))
    metrics = {"balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"], "auroc": auroc(scores, y),
               "accuracy": m["acc@1"]}
    digest = hashlib.sha256()
    for path, label in zip(data.paths, data.labels, strict=True):
        digest.update(f"{slide_fingerprint(path)}\0{label}\0".encode())
    dataset = {"name": data.source.stem, "path": str(data.source), "sha256": digest.hexdigest(), "n": len(data.paths)}
    used = request.tiles or api.TileOptions()
    settings = {"pooling": pooling, "k": k, "fraction": fraction, "tiles": [used.tile_size, used.mpp],
                "phrases": [list(p) for p in spec.phrases], "templates": list(spec.templates or ["(default)"])}
    model = model_record(backend.model(model_name), model_name)
    return make_result("slide-zeroshot", model=model, dataset=dataset, settings=settings, metrics=metrics,
                       details={"per_class_recall": m["per_class_recall"], "confusion_matrix": m["confusion_matrix"],
                                "slides": per_slide})

