"""k-nearest-neighbour classification on frozen image features: the encoder benchmark the
pathology foundation-model papers report beside the linear probe (UNI, CONCH, GigaPath report
kNN balanced accuracy on CRC-100K), and one that needs images only, so every encoder takes it.

Protocol (UNI's): features L2-normalised, ``k = 20`` neighbours by Euclidean distance (on unit
vectors, the cosine order), each neighbour's vote weighted by ``1 / distance``; scikit-learn's
``KNeighborsClassifier``. Deterministic: no seed to average over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.errors import InputError

DEFAULT_K = 20


@dataclass(frozen=True)
class KnnConfig:
    """``k`` neighbours; ``weights`` ``"distance"`` (1 / distance votes) or ``"uniform"``."""

    k: int = DEFAULT_K
    weights: str = "distance"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"--k: the number of neighbours must be at least 1, got {self.k}")
        if self.weights not in ("distance", "uniform"):
            raise InputError(f"--weights: choose 'distance' or 'uniform', got {self.weights!r}")


def knn_classify(train_x: np.ndarray, train_y: Sequence[int] | np.ndarray, test_x: np.ndarray,
                 test_y: Sequence[int] | np.ndarray, class_names: Sequence[str],
                 config: KnnConfig = KnnConfig()) -> dict[str, Any]:
    """kNN predictions of ``test_x`` from ``train_x``; the classification metrics of
    :func:`training.evaluation.metrics.classification_metrics` (balanced accuracy, macro F1,
    per-class recall, confusion matrix) of the neighbours' class probabilities.

    ``k`` larger than the training set is cut to its size (the run records the ``k`` used).
    """
    from sklearn.neighbors import KNeighborsClassifier

    from training.evaluation.metrics import classification_metrics, normalise

    xtr, xte = normalise(np.asarray(train_x, np.float32)), normalise(np.asarray(test_x, np.float32))
    ytr, yte = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise InputError(f"knn: {len(xtr)} training features for {len(ytr)} labels, {len(xte)} test features "
                         f"for {len(yte)} labels")
    if len(xtr) == 0 or len(xte) == 0:
        raise InputError("knn: needs at least one training and one test image")
    k = min(config.k, len(xtr))
    clf = KNeighborsClassifier(n_neighbors=k, weights=config.weights, metric="euclidean").fit(xtr, ytr)
    probs = np.zeros((len(xte), len(class_names)), np.float64)
    probs[:, clf.classes_] = clf.predict_proba(xte)  # classes absent from training keep 0
    out = classification_metrics(probs, yte, tuple(class_names), ks=(1,))
    out["k"] = float(k)
    return out
