"""Linear probing of frozen features with scikit-learn's logistic regression.

Protocol (per seed; results are mean +- std over seeds):

1. The training pool is split, stratified and seeded, into a fitting set and a validation set
   (``val_fraction``), unless a validation set is given.
2. Few-shot: ``shots`` images per class are drawn (seeded) from the fitting set (every image of
   a class with fewer). Full data: the whole fitting set.
3. The inverse regularisation strength C is chosen from ``c_grid`` by balanced accuracy on the
   validation set; the model fitted with that C on step 2's set is scored on the test set.

Scores: balanced accuracy, macro F1 and macro one-vs-rest AUROC (binary: the AUROC of class 1);
the conventions each follows are spelled out in ``training.evaluation.metrics.CONVENTIONS`` and
written into every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from backend.errors import InputError

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

DEFAULT_C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 9))
DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of a linear probe (see the module docstring)."""

    seeds: int = 5
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    val_fraction: float = 0.2
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise InputError(f"seeds: must be >= 1, got {self.seeds}")
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise InputError(f"c_grid: needs positive values, got {self.c_grid}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class ProbeResult:
    """Per-seed scores and their mean/std; ``chosen_c`` per seed."""

    shots: int | None  # None: all training data
    per_seed: tuple[dict[str, float], ...]
    chosen_c: tuple[float, ...]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)


def _scores(clf: LogisticRegression, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    pred = clf.predict(x)
    out = {
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0)),
    }
    proba = np.zeros((len(y), n_classes))
    proba[:, clf.classes_] = clf.predict_proba(x)
    out["macro_auroc"] = macro_auroc(y, proba)
    return out


def macro_auroc(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUROC of the raw class probabilities (see ``CONVENTIONS``).

    Parameters
    ----------
    y
        (N,) true class indices into the columns of ``proba``.
    proba
        (N, C) predicted probabilities, as the probe gives them (not renormalised).

    Returns
    -------
    float
        Two classes: the AUROC of class 1. More: the mean over the classes present in ``y``
        of ``roc_auc_score(y == c, proba[:, c])``, which is scikit-learn's
        ``roc_auc_score(y, proba, multi_class="ovr")`` when every class is present. NaN when
        fewer than two classes are present (no negatives or no positives to rank).
    """
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present]))


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)


def _sample_shots(y: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    idx: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx.extend(rng.choice(members, size=min(shots, len(members)), replace=False))
    return np.sort(np.asarray(idx))


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    n_classes: int | None = None,
    shots: int | None = None,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    config: ProbeConfig = ProbeConfig(),
) -> ProbeResult:
    """Fit and score a logistic-regression probe over ``config.seeds`` seeds.

    Parameters
    ----------
    train_x, train_y
        Training pool features (N, D) and integer labels.
    test_x, test_y
        Held-out test features and labels.
    n_classes
        Number of classes (default: one more than the largest label seen).
    shots
        Images per class for few-shot probing; ``None`` uses the whole fitting set.
    val_x, val_y
        An explicit validation set for the C sweep; default: carved from the training pool.
    config
        Seeds, C grid, validation fraction.
    """
    from sklearn.model_selection import train_test_split

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise InputError("linear probe: features and labels differ in length")
    k = int(n_classes if n_classes is not None else max(train_y.max(), test_y.max()) + 1)
    if len(np.unique(train_y)) < 2:
        raise InputError(f"linear probe: the training set has {len(np.unique(train_y))} class; needs at least 2")
    if shots is not None and shots < 1:
        raise InputError(f"shots: must be >= 1, got {shots}")
    per_seed, chosen = [], []
    for seed in range(config.seeds):
        rng = np.random.default_rng(seed)
        if val_x is None:
            counts = np.bincount(train_y)
            stratify = train_y if counts[counts > 0].min() >= 2 else None
            fx, vx, fy, vy = train_test_split(train_x, train_y, test_size=config.val_fraction, random_state=seed,
                                              stratify=stratify)
        else:
            fx, fy, vx, vy = train_x, train_y, np.asarray(val_x, np.float64), np.asarray(val_y, np.int64)
        if shots is not None:
            pick = _sample_shots(fy, shots, rng)
            fx, fy = fx[pick], fy[pick]
        if len(np.unique(fy)) < 2:
            raise InputError(f"linear probe (seed {seed}): the fitting set has one class; give more images per class")
        best_c, best = config.c_grid[0], -1.0
        for c in config.c_grid:
            score = _scores(_fit(fx, fy, c, config.max_iter), vx, vy, k)["balanced_accuracy"]
            if score > best:  # first (strongest regularisation) wins ties
                best_c, best = c, score
        per_seed.append(_scores(_fit(fx, fy, best_c, config.max_iter), test_x, test_y, k))
        chosen.append(float(best_c))
    # std with ddof=0 (numpy's default): the spread of these seeds, as CONVENTIONS["std"] says
    summary = {m: {"mean": float(np.mean([s[m] for s in per_seed])),
                   "std": float(np.std([s[m] for s in per_seed], ddof=0))} for m in per_seed[0]}
    return ProbeResult(shots, tuple(per_seed), tuple(chosen), summary)


def few_shot_probes(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
    shots: Sequence[int] = DEFAULT_SHOTS, n_classes: int | None = None, config: ProbeConfig = ProbeConfig(),
) -> list[ProbeResult]:
    """:func:`linear_probe` for each shot count, then on all data."""
    return [linear_probe(train_x, train_y, test_x, test_y, n_classes=n_classes, shots=s, config=config)
            for s in (*shots, None)]
