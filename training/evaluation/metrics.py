"""Evaluation metrics as pure functions on embeddings and scores.

Standard classification metrics come from scikit-learn; only the ranking metrics no
maintained library computes on a (query x corpus) similarity matrix the way the source
projects report them are written here. Everything takes numpy arrays and returns plain
floats (or dicts of them), so results go straight into the JSON result document.

Conventions (see also ``docs`` in each function):

- Similarities are cosine: embeddings are L2-normalised here before any dot product.
- Ranks are 1-based. Ties are broken by corpus order (a stable sort), so results are
  deterministic.
- "recall@k" of a retrieval query is a hit rate: 1 when at least one relevant item is in
  the top k, else 0, averaged over queries (CLIP_benchmark's and the cell project's usage).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.errors import InputError

RECALL_KS: tuple[int, ...] = (1, 3, 5, 10, 20)  # the cell project's k
RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)  # CLIP_benchmark's k
_CHUNK = 1024  # queries ranked at once: bounds the (chunk x corpus) work arrays

#: How each metric is computed where implementations differ; results carry the entries
#: their metrics use (``settings["conventions"]``), so a number can be compared with another
#: library's without reading this code.
CONVENTIONS: dict[str, str] = {
    "balanced_accuracy": "scikit-learn balanced_accuracy_score: mean recall over the classes present in the "
                         "true labels",
    "macro_f1": "unweighted mean F1 over ALL classes of the class list (labels=0..C-1, zero_division=0): a "
                "class neither present nor predicted scores 0; scikit-learn's default (labels=None) averages "
                "only the labels present in y_true or y_pred",
    "macro_auroc": "one-vs-rest AUROC of the raw predicted probabilities (not renormalised), averaged over the "
                   "classes present in the test labels; equals scikit-learn roc_auc_score(y, proba, "
                   "multi_class='ovr', average='macro') when all classes are present; two classes: the AUROC "
                   "of class 1; null when fewer than 2 classes are present",
    "std": "population standard deviation over seeds: numpy.std with ddof=0 (not the sample std, ddof=1)",
    "map@k": "AP@k = (1 / min(k, R)) * sum_{i<=k} P@i * rel_i, R = the other images of the query's class "
             "(leave-one-out); queries with R = 0 are left out (queries_without_match)",
    "recall@k": "hit rate: 1 when at least one relevant item is among the top k, averaged over queries",
    "ties": "ranks break ties by corpus order (stable sort)",
}


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"embeddings must be a 2-D (N, D) array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _labels(y: Sequence[int] | np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"{what}: expected {n} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


# --- classification -----------------------------------------------------------------------


def classification_metrics(
    scores: np.ndarray, y_true: Sequence[int] | np.ndarray, class_names: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, object]:
    """Zero-shot (or any scored) classification metrics.

    Parameters
    ----------
    scores
        (N, C) class scores (logits, probabilities or cosines: only their order matters).
    y_true
        (N,) true class indices in ``0..C-1``.
    class_names
        C names, used as keys of ``per_class_recall``.
    ks
        Top-k accuracies to report; k larger than C is reported as ``acc@k`` = 1.0 (every
        class is in the top k) and therefore skipped when ``k > C``.

    Returns
    -------
    dict
        ``acc@k`` for each k <= C, ``balanced_accuracy`` (mean per-class recall over the
        classes present in ``y_true``), ``macro_f1`` (over all C classes; a class never
        predicted nor present scores 0), ``per_class_recall`` {name: recall or None when the
        class has no sample}, ``confusion_matrix`` (C x C list, rows true, columns predicted).
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise InputError(f"scores: expected shape (N, {len(class_names)}), got {scores.shape}")
    y = _labels(y_true, scores.shape[0], "y_true")
    n_cls = scores.shape[1]
    if y.size and (y.min() < 0 or y.max() >= n_cls):
        raise InputError(f"y_true: class indices must be in 0..{n_cls - 1}, got {y.min()}..{y.max()}")
    if y.size == 0:
        raise InputError("classification metrics need at least one sample")
    order = np.argsort(-scores, axis=1, kind="stable")
    pred = order[:, 0]
    out: dict[str, object] = {}
    for k in ks:
        if k <= n_cls:
            out[f"acc@{k}"] = float(np.mean(np.any(order[:, :k] == y[:, None], axis=1)))
    labels = list(range(n_cls))
    cm = confusion_matrix(y, pred, labels=labels)
    support = cm.sum(axis=1)
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    out["macro_f1"] = float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    out["per_class_recall"] = {
        str(name): (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = cm.tolist()
    return out


# --- ranking core ------------------------------------------------------------------------


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the best-ranked relevant item per query (``inf`` when none is relevant).

    ``scores`` and ``relevant`` are (Q, N); items with score ``-inf`` are never ranked.
    """
    ranks = np.full(scores.shape[0], np.inf)
    for s in range(0, scores.shape[0], _CHUNK):
        sc, rel = scores[s : s + _CHUNK], relevant[s : s + _CHUNK]
        order = np.argsort(-sc, axis=1, kind="stable")
        rel_sorted = np.take_along_axis(rel, order, axis=1) & np.isfinite(np.take_along_axis(sc, order, axis=1))
        has = rel_sorted.any(axis=1)
        ranks[s : s + _CHUNK][has] = rel_sorted[has].argmax(axis=1) + 1
    return ranks


def ranking_metrics(
    scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = RECALL_KS, cutoff: int = 10
) -> dict[str, float]:
    """Hit-rate recall@k, MRR@cutoff and nDCG@cutoff over queries with at least one relevant item.

    Parameters
    ----------
    scores
        (Q, N) similarities; ``-inf`` marks corpus items excluded for that query.
    relevant
        (Q, N) booleans: which corpus items answer each query (binary relevance).
    ks
        recall@k cut-offs.
    cutoff
        Depth of MRR and nDCG.

    Returns
    -------
    dict
        ``recall@k``: fraction of queries with a relevant item in the top k;
        ``mrr@c``: mean of 1/rank of the first relevant item (0 beyond rank c);
        ``ndcg@c``: mean of DCG/IDCG with DCG = sum over the top c of rel_i / log2(i + 1)
        and IDCG the DCG of an ideal order (min(R, c) relevant items first);
        ``queries``: how many queries were scored (those with no relevant item are dropped).
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool) & np.isfinite(scores)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise InputError(f"scores {scores.shape} and relevant {relevant.shape} must be the same (Q, N) shape")
    keep = relevant.any(axis=1)
    scores, relevant = scores[keep], relevant[keep]
    out: dict[str, float] = {"queries": float(keep.sum())}
    if not keep.any():
        raise InputError("ranking metrics: no query has a relevant corpus item")
    ranks = first_relevant_ranks(scores, relevant)
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranks <= k))
    out[f"mrr@{cutoff}"] = float(np.mean(np.where(ranks <= cutoff, 1.0 / ranks, 0.0)))
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    ndcg = []
    for s in range(0, scores.shape[0], _CHUNK):
        sc, rel = scores[s : s + _CHUNK], relevant[s : s + _CHUNK]
        top = np.argsort(-sc, axis=1, kind="stable")[:, :cutoff]
        gains = np.take_along_axis(rel, top, axis=1).astype(np.float64)
        dcg = gains @ discounts[: gains.shape[1]]
        n_rel = np.minimum(rel.sum(axis=1), cutoff)
        idcg = np.cumsum(discounts)[n_rel - 1]
        ndcg.append(dcg / idcg)
    out[f"ndcg@{cutoff}"] = float(np.mean(np.concatenate(ndcg)))
    return out


# --- image <-> text retrieval ----------------------------------------------------------


def cross_modal_retrieval(
    image_emb: np.ndarray, text_emb: np.ndarray, text_image: Sequence[int] | np.ndarray, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[str, float]:
    """Image->text and text->image retrieval with several captions per image.

    Parameters
    ----------
    image_emb
        (N, D) image embeddings.
    text_emb
        (M, D) caption embeddings.
    text_image
        (M,) index into ``image_emb`` of the image each caption describes.

    Returns
    -------
    dict
        ``image_to_text_recall@k``: fraction of images with at least one of their captions
        among the top k texts; ``text_to_image_recall@k``: fraction of captions whose image
        is among the top k images; ``*_mean_rank`` / ``*_median_rank``: the 1-based rank of
        the first correct item (image->text: the best-ranked of its captions).
    """
    img, txt = normalise(image_emb), normalise(text_emb)
    owner = _labels(text_image, txt.shape[0], "text_image")
    if owner.size and (owner.min() < 0 or owner.max() >= img.shape[0]):
        raise InputError(f"text_image: image indices must be in 0..{img.shape[0] - 1}")
    sim = img @ txt.T  # (N, M)
    rel = owner[None, :] == np.arange(img.shape[0])[:, None]
    out: dict[str, float] = {}
    for name, s, r in (("image_to_text", sim, rel), ("text_to_image", sim.T, rel.T)):
        has = r.any(axis=1)  # images without captions cannot be scored
        ranks = first_relevant_ranks(s[has], r[has])
        for k in ks:
            out[f"{name}_recall@{k}"] = float(np.mean(ranks <= k))
        out[f"{name}_mean_rank"] = float(np.mean(ranks))
        out[f"{name}_median_rank"] = float(np.median(ranks))
    return out


# --- image -> image retrieval over labelled images --------------------------------------


def image_retrieval(
    emb: np.ndarray, labels: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Leave-one-out image->image retrieval: every image queries all the others.

    For a query q with class y, its neighbours are the other images sorted by cosine
    similarity (q itself excluded). With ``rel_i`` = 1 when the i-th neighbour has class y:

    - ``top{k}_accuracy``: fraction of queries with at least one rel_i = 1 for i <= k;
    - ``majority_vote@k``: fraction of queries whose top k's most frequent class is y (a tie
      goes to the tied class met first in rank order);
    - ``map@k``: mean over queries of AP@k = (1 / min(k, R)) * sum_{i<=k} P@i * rel_i, with
      P@i the precision of the top i and R the number of other images of class y (queries
      with R = 0, a class of one image, are left out and counted in ``queries_without_match``).
    """
    x = normalise(emb)
    y = _labels(labels, x.shape[0], "labels")
    if x.shape[0] < 2:
        raise InputError("image retrieval needs at least 2 images")
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    kmax = min(max(ks), x.shape[0] - 1)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]
    hit = y[top] == y[:, None]  # (N, kmax)
    n_rel = np.bincount(y)[y] - 1
    out: dict[str, float] = {}
    with_match = n_rel > 0
    for k in ks:
        kk = min(k, kmax)
        out[f"top{k}_accuracy"] = float(np.mean(hit[:, :kk].any(axis=1)))
        votes = [_majority(y[top[q, :kk]]) == y[q] for q in range(len(y))]
        out[f"majority_vote@{k}"] = float(np.mean(votes))
        h = hit[:, :kk].astype(np.float64)
        prec = np.cumsum(h, axis=1) / np.arange(1, kk + 1)
        ap = (prec * h).sum(axis=1) / np.maximum(np.minimum(kk, n_rel), 1)
        out[f"map@{k}"] = float(np.mean(ap[with_match])) if with_match.any() else 0.0
    out["queries_without_match"] = float((~with_match).sum())
    return out


def _majority(classes: np.ndarray) -> int:
    values, first, counts = np.unique(classes, return_index=True, return_counts=True)
    best = counts == counts.max()
    return int(values[best][np.argmin(first[best])])


# --- the cell project's specific / non-specific recall ---------------------------------


def specific_recall(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    relevant: np.ndarray,
    query_group: Sequence[str] | np.ndarray,
    corpus_group: Sequence[str] | np.ndarray,
    ks: Sequence[int] = RECALL_KS,
    cutoff: int = 10,
) -> dict[str, float]:
    """"Non-specific" (whole corpus) and "specific" (corpus of the query's group) retrieval.

    Parameters
    ----------
    query_emb, corpus_emb
        (Q, D) query (caption) and (N, D) corpus (image) embeddings.
    relevant
        (Q, N) booleans: the images each caption matches (its label-1 pairs).
    query_group, corpus_group
        The descriptor of each query and each corpus image; "specific" ranks only the images
        sharing the query's descriptor.

    Returns
    -------
    dict
        ``nonspecific_recall@k``, ``nonspecific_mrr@c``, ``nonspecific_ndcg@c`` and the same
        with the ``specific_`` prefix (see :func:`ranking_metrics`).
    """
    q, c = normalise(query_emb), normalise(corpus_emb)
    rel = np.asarray(relevant, dtype=bool)
    if rel.shape != (q.shape[0], c.shape[0]):
        raise InputError(f"relevant: expected shape {(q.shape[0], c.shape[0])}, got {rel.shape}")
    qg, cg = np.asarray(query_group).astype(str), np.asarray(corpus_group).astype(str)
    if qg.shape != (q.shape[0],) or cg.shape != (c.shape[0],):
        raise InputError("query_group / corpus_group: one descriptor per query / corpus item")
    sim = (q @ c.T).astype(np.float64)
    out = {f"nonspecific_{k}": v for k, v in ranking_metrics(sim, rel, ks, cutoff).items()}
    same = qg[:, None] == cg[None, :]
    spec = ranking_metrics(np.where(same, sim, -np.inf), rel & same, ks, cutoff)
    out.update({f"specific_{k}": v for k, v in spec.items()})
    return out
