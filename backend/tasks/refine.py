"""Few-shot refinement of a class map: a user marks a few tiles, the whole slide's map follows.

The starting point is a linear classifier over the slide's cached tile embeddings: the zero-shot
text classifier (``logit_scale x`` the prompts' class vectors, no bias; :func:`text_head`) or a
saved classifier's head. Marked tiles adapt it and the map is recomputed from the cached
vectors, with no pixel read and no model call.

Method (chosen by measurement, numbers below): a logistic-regression head initialised at the
prior head, trained on the marks with an L2 pull back towards it::

    logits(x) = W0 x + b0 + dW (x - m) / s + db
    loss      = sum_marks CE(logits, mark) + weight_pull/2 |dW|^2 + bias_pull/2 |db|^2

``m`` is the mean tile vector of the slide(s) the marks come from and ``s`` the RMS norm of the
centred vectors. Centring matters: CLIP image embeddings share a large common component (the
tiles of the test slide below have a mean cosine of 0.97 with ``test-tiny``), so a residual on raw
vectors raises a marked class almost everywhere at once; on centred vectors it
moves tiles in proportion to how much they resemble the marked ones *relative to the slide*.
The pulls keep a few marks from flipping the slide; with no marks the head is the prior, and the
map is the prior's map exactly. The fitted head is again linear (``W x + b``), which is what a
classifier bundle stores (:mod:`backend.models.classifier`) and applies to other slides.

Measured with ``python benchmarks/refine_methods.py --draws 10`` on the tests' planted-texture
slide (225 tiles of 5 real textures, ``test-tiny`` features; its zero-shot labels 22 % of the
tiles right, every one "glands"), and with a simulated informative prior (class vectors from 3
held-out tiles per class plus noise: 52 % right). Accuracy on the unmarked tiles with k marks per
class, mean (worst draw); "collat" is the share of the other classes' tiles whose label a single
mark changes (how far one mark flips the slide). Best settings of each candidate::

                                       test-tiny's text prior              simulated prior
    candidate                      k=1   k=2   k=5 (worst)  collat   k=1   k=2   k=5 (worst)  collat
    Tip-Adapter raw a=5 b=50       .51   .75   .94 (.87)    .10      .83   .85   .83 (.77)    .21
    Tip-Adapter centred a=20 b=5   .80   .84   .84 (.80)    .16      .82   .82   .81 (.79)    .17
    prototypes centred k=0.5       .80   .84   .88 (.83)    .88      .83   .86   .88 (.83)    .06
    logistic w=0.1 b=0.3           .77   .91   .96 (.93)    .26      .84   .90   .93 (.89)    .19
    logistic w=0.3 b=1 (chosen)    .46   .68   .94 (.90)    .07      .81   .87   .92 (.87)    .13
    logistic w=1 b=1               .45   .45   .86 (.83)    .03      .75   .83   .89 (.86)    .14

The pulled logistic head is the only candidate that reaches >= 90 % with five marks per class
under both priors; among its settings w=0.3, b=1 flips the fewest other tiles per mark (7 %
against a confidently wrong prior) for one or two points of accuracy, and the head itself labels
100 % (98 % under the simulated prior) of its marks right, so a saved classifier reproduces the
refined map. Tip-Adapter on raw vectors needs a
sharp kernel (the affinities are flat at cos ~0.97) and then generalises poorly; prototypes
blended with a wrong text prior flip most of the slide with one mark. Against a confidently
wrong prior one mark per class is deliberately not enough (46 %): that is the prior resisting.

A new class (a name with examples and no prompt) starts from the mean of the prior's rows, so it
begins as an average class and its marks alone pull it away. Marked tiles always take their mark
in the refined map (probability 1), whatever the head says of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.embed.types import SlideEmbeddings
from backend.errors import InputError, ModelMismatchError
from backend.models.heads import FusionHead, Head, LinearHead
from backend.tasks.class_map import ClassMap, build_class_map, check_unknown_threshold
from backend.tasks.marks_only import check_marks_only, marks_only_head, unlabelled_map


def text_head(text_features: np.ndarray, logit_scale: float, class_names: Sequence[str],
              colors: Sequence[tuple[int, int, int]]) -> LinearHead:
    """The zero-shot classifier as a head: ``logit_scale x`` the class text vectors, bias 0."""
    weight = np.float32(logit_scale) * np.asarray(text_features, dtype=np.float32)
    return LinearHead(tuple(class_names), tuple(colors), weight, np.zeros(len(class_names), np.float32))


def head_class_map(embeddings: SlideEmbeddings, head: LinearHead | FusionHead, *,
                   unknown_threshold: float | None = None, templates: tuple[str, ...] = (),
                   model_id: str | None = None) -> ClassMap:
    """Apply ``head`` to every tile of ``embeddings``: the class map of its logits
    (:func:`backend.tasks.class_map.build_class_map`, as zero-shot's and every classifier's).

    A linear head's logits are computed as :func:`backend.tasks.zero_shot.classify` computes
    zero-shot's (the same product in the same layout), so the zero-shot head (:func:`text_head`)
    gives the zero-shot map bit for bit; a late-fusion head's through its own ``logits``.
    """
    if head.embed_dim != embeddings.embed_dim:
        raise ModelMismatchError(
            f"classifier head of dimension {head.embed_dim} cannot classify {embeddings.slide_name}'s "
            f"embeddings of dimension {embeddings.embed_dim} ({embeddings.model_id})"
        )
    check_unknown_threshold(unknown_threshold)  # before the product
    if isinstance(head, LinearHead):
        logits = head.weight @ embeddings.vectors.T  # (C, N): build_class_map's class-major layout
        if head.bias.any():
            logits += head.bias[:, None]
    else:
        logits = np.ascontiguousarray(head.logits(embeddings.vectors).T)
    return build_class_map(logits, head.class_names, head.colors, embeddings, unknown_threshold=unknown_threshold,
                           templates=templates, model_id=model_id)


# --- fitting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefineConfig:
    """Hyper-parameters of :func:`fit_head` (defaults measured: see the module docstring).

    Attributes
    ----------
    weight_pull, bias_pull
        L2 strength of the pull of the weight residual (on centred, unit-RMS features) and of
        the bias residual back to the prior head, against a summed cross-entropy on the marks.
    max_iter
        L-BFGS iterations (the problem is small and smooth: it converges in far fewer).
    """

    weight_pull: float = 0.3
    bias_pull: float = 1.0
    max_iter: int = 200

    def __post_init__(self) -> None:
        if not (self.weight_pull > 0 and self.bias_pull > 0):
            raise InputError(
                f"refine: weight_pull and bias_pull must be > 0 (they keep a few marks from "
                f"flipping the slide), got {self.weight_pull}, {self.bias_pull}"
            )
        if self.max_iter < 1:
            raise InputError(f"refine: max_iter must be at least 1, got {self.max_iter}")


@dataclass(frozen=True)
class FeatureCentre:
    """The mean tile vector ``mean`` and RMS norm ``scale`` of the centred vectors."""

    mean: np.ndarray
    scale: float


def feature_centre(vectors: Sequence[np.ndarray] | np.ndarray) -> FeatureCentre:
    """Centre of the tile vectors of one slide ``(N, D)`` or of several (a list of them)."""
    blocks = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
    n = sum(len(v) for v in blocks)
    if n == 0:
        raise InputError("refine: no tiles to centre the features on (the slide has no tissue tile)")
    # Sums accumulated in float64 without a float64 copy of the (N, D) block (100k x 512: ~40 ms).
    total = sum(np.asarray(v).sum(axis=0, dtype=np.float64) for v in blocks)
    sq = sum(float(np.einsum("ij,ij->i", v, v).sum(dtype=np.float64)) for v in blocks)
    mean = total / n
    scale = float(np.sqrt(max(sq / n - float(mean @ mean), 0.0)))
    return FeatureCentre(mean.astype(np.float32), max(scale, 1e-6))


@dataclass(frozen=True, eq=False)
class FitReport:
    """How a fit went: marks per class, marks the fitted head itself gets right, L-BFGS steps."""

    marks_per_class: tuple[int, ...]
    marks_fit: int
    iterations: int


def fit_head(prior: LinearHead, centre: FeatureCentre, mark_vectors: np.ndarray, mark_classes: np.ndarray,
             config: RefineConfig = RefineConfig()) -> tuple[LinearHead, FitReport]:
    """Fit the refined head: ``prior`` plus a pulled-back residual trained on the marks.

    Parameters
    ----------
    prior
        The head to start from (its classes include every marked class).
    centre
        :func:`feature_centre` of the tiles the marks come from.
    mark_vectors : (M, D) float32
        Embeddings of the marked tiles.
    mark_classes : (M,) int
        Row of ``prior`` each marked tile belongs to.

    Returns
    -------
    (LinearHead, FitReport)
        The refined head, of the same classes; with no marks, ``prior`` itself.
    """
    from scipy.optimize import minimize

    x = np.asarray(mark_vectors, dtype=np.float64)
    y = np.asarray(mark_classes, dtype=np.int64).reshape(-1)
    c, d = prior.n_classes, prior.embed_dim
    if x.ndim != 2 or x.shape[1] != d or len(x) != len(y):
        raise InputError(f"refine: marks {x.shape} and their classes {y.shape} do not fit a head of dimension {d}")
    if len(y) and (y.min() < 0 or y.max() >= c):
        raise InputError(f"refine: mark class {int(y.max())} is outside the head's {c} classes")
    counts = tuple(int(v) for v in np.bincount(y, minlength=c))
    if len(y) == 0:
        return prior, FitReport(counts, 0, 0)
    u = (x - centre.mean.astype(np.float64)) / centre.scale  # centred, unit-RMS features
    base = x @ prior.weight.T.astype(np.float64) + prior.bias.astype(np.float64)  # (M, C) prior logits
    onehot = np.eye(c)[y]
    # The optimal residual lies in the span of the marks' features (the loss sees dW only
    # through u dW^T, and the pull is isotropic), so fit it in an orthonormal basis q of that
    # span: dW = a q with a (C, r), r <= M. The same optimum as over all C x D weights, with
    # M x C unknowns instead of D x C (10x fewer for 50 marks at D = 512, and r x C L-BFGS work).
    # The basis from the (M, M) Gram matrix: OpenBLAS's QR of the (D, M) block took 140 ms here.
    lam, vecs = np.linalg.eigh(u @ u.T)
    keep = lam > 1e-10 * max(float(lam.max()), 1e-30)
    lam, vecs = lam[keep], vecs[:, keep]
    q = (vecs / np.sqrt(lam)).T @ u  # (r, D) orthonormal rows spanning the marks
    p = vecs * np.sqrt(lam)  # (M, r): the marks' coordinates, u = p q
    k = p.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, db = theta[: c * k].reshape(c, k), theta[c * k :]
        z = base + p @ a.T + db
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        g = np.exp(logp) - onehot  # dCE/dz
        value = -float((onehot * logp).sum()) + 0.5 * (config.weight_pull * float((a * a).sum())
                                                      + config.bias_pull * float(db @ db))
        grad = np.concatenate([(g.T @ p + config.weight_pull * a).ravel(), g.sum(axis=0) + config.bias_pull * db])
        return value, grad

    res = minimize(loss, np.zeros(c * k + c), jac=True, method="L-BFGS-B",
                   options={"maxiter": config.max_iter, "gtol": 1e-8})
    dw, db = res.x[: c * k].reshape(c, k) @ q, res.x[c * k :]
    # Fold the centring into one linear head: W0 x + b0 + dW (x - m)/s + db.
    weight = prior.weight.astype(np.float64) + dw / centre.scale
    bias = prior.bias.astype(np.float64) + db - (dw @ centre.mean.astype(np.float64)) / centre.scale
    head = LinearHead(prior.class_names, prior.colors, weight, bias)
    fit = int(((x @ weight.T + bias).argmax(axis=1) == y).sum())
    return head, FitReport(counts, fit, int(res.nit))


# --- refining a slide -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Refinement:
    """A refined class map, the head that made it and what the marks were.

    Attributes
    ----------
    class_map : ClassMap
        The refined map; marked tiles carry their mark with probability 1.
    head : LinearHead
        The refined head (what "save as classifier" stores).
    marked : (M,) int
        Tile indices of the marks; ``mark_classes`` their class rows in ``head``.
    report : FitReport
    """

    class_map: ClassMap
    head: LinearHead
    marked: np.ndarray
    mark_classes: np.ndarray
    report: FitReport


def mark_rows(head: LinearHead, names: Sequence[str]) -> tuple[LinearHead, np.ndarray]:
    """``head`` extended with the marks' new classes, and each mark's class row in it."""
    names = [str(n).strip() for n in names]
    if any(not n for n in names):
        raise InputError("refine: a mark has an empty class name")
    head = head.extended(list(dict.fromkeys(names)))
    index = {n: i for i, n in enumerate(head.class_names)}
    return head, np.array([index[n] for n in names], dtype=np.int64)


def marked_tiles(embeddings: SlideEmbeddings, marks: Sequence[tuple[str, Sequence[tuple[int, int]]]]
                 ) -> tuple[np.ndarray, list[str]]:
    """Tile indices and class names of marks given as ``(label, grid cells (row, col))``.

    Raises InputError naming the first cell that is outside the grid or holds no tissue tile.
    """
    rows, cols = embeddings.grid_shape
    lookup = np.full(rows * cols, -1, dtype=np.int64)
    gi = embeddings.grid_index
    lookup[gi[:, 0] * cols + gi[:, 1]] = np.arange(embeddings.n_tiles)
    idx: list[int] = []
    names: list[str] = []
    for label, cells in marks:
        for cell in cells:
            r, c = (int(v) for v in cell)
            tile = lookup[r * cols + c] if 0 <= r < rows and 0 <= c < cols else -1
            if tile < 0:
                where = "outside the grid" if not (0 <= r < rows and 0 <= c < cols) else "a cell without a tissue tile"
                raise InputError(
                    f"mark {label!r} at cell (row {r}, col {c}) of {embeddings.slide_name}: {where} "
                    f"(the class map is {rows} x {cols}); marks go on tiles of the map"
                )
            idx.append(int(tile))
            names.append(str(label))
    return np.array(idx, dtype=np.int64), names


def fit_marks(prior: LinearHead, slides: Sequence[tuple[SlideEmbeddings, Sequence[int] | np.ndarray, Sequence[str]]],
              config: RefineConfig = RefineConfig()) -> tuple[LinearHead, list[tuple[np.ndarray, np.ndarray]], FitReport]:
    """Fit the refined head on the marks of one or several slides.

    Parameters
    ----------
    prior
        The head to start from.
    slides
        Per slide: its embeddings, the marked tile indices and each mark's class name (a
        name the prior lacks adds a class; a tile marked twice keeps its last mark).
    config
        Fitting hyper-parameters.

    Returns
    -------
    (head, marks, report)
        The refined head (``prior`` extended with new classes when there are no marks), and per
        slide the kept ``(tile indices, class rows)``.
    """
    all_names: list[str] = []
    checked = []
    for emb, marked, names in slides:
        idx = np.asarray(marked, dtype=np.int64).reshape(-1)
        if len(idx) != len(names):
            raise InputError(f"refine: {len(idx)} marked tiles but {len(names)} class names ({emb.slide_name})")
        if len(idx) and (idx.min() < 0 or idx.max() >= emb.n_tiles):
            bad = int(idx[(idx < 0) | (idx >= emb.n_tiles)][0])
            raise InputError(f"refine: marked tile {bad} is not one of {emb.slide_name}'s {emb.n_tiles} tiles")
        checked.append((emb, idx))
        all_names.extend(names)
    head, rows = mark_rows(prior, all_names)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0
    for _, idx in checked:
        r = rows[start : start + len(idx)]
        start += len(idx)
        last = {int(i): k for k, i in enumerate(idx)}  # the last mark of a tile wins
        keep = np.array(sorted(last.values()), dtype=np.int64)
        kept.append((idx[keep], r[keep]))
    n = sum(len(i) for i, _ in kept)
    if n == 0:
        return head, kept, FitReport(tuple(0 for _ in head.class_names), 0, 0)
    vectors = np.concatenate([emb.vectors[i] for (emb, _), (i, _) in zip(checked, kept, strict=True)])
    classes = np.concatenate([r for _, r in kept])
    centre = feature_centre([emb.vectors for emb, _ in checked])
    fitted, report = fit_head(head, centre, vectors, classes, config)
    return fitted, kept, report


def refine(embeddings: SlideEmbeddings, prior: LinearHead, marked: Sequence[int] | np.ndarray,
           mark_names: Sequence[str], *, config: RefineConfig = RefineConfig(),
           unknown_threshold: float | None = None, templates: tuple[str, ...] = ()) -> Refinement:
    """Refine ``prior``'s map of ``embeddings`` with marked tiles.

    Parameters
    ----------
    embeddings
        The slide's cached tile embeddings.
    prior
        The head the map came from (:func:`text_head` for zero-shot, or a classifier's).
    marked : (M,) int
        Indices of the marked tiles in ``embeddings``; a tile marked twice keeps its last mark.
    mark_names : (M,) str
        Each mark's class; a name the prior lacks adds a class (no prompt needed).
    config
        Fitting hyper-parameters.
    unknown_threshold, templates
        As for zero-shot (marked tiles are never "unknown").

    Returns
    -------
    Refinement
        With no marks: the prior's map, exactly.
    """
    head, ((idx, rows),), report = fit_marks(prior, [(embeddings, marked, mark_names)], config)
    if head.n_classes == 0:  # marks alone, none yet: every tissue tile is still unlabelled
        return Refinement(unlabelled_map(embeddings), head, idx, rows, report)
    cm = head_class_map(embeddings, head, unknown_threshold=unknown_threshold, templates=templates)
    if len(idx):
        cm = with_marks(cm, idx, rows)
    return Refinement(cm, head, idx, rows, report)


def class_query(head: Head, name: str) -> np.ndarray:
    """A unit (D,) query vector for class ``name``: its row minus the mean row (what raises its
    logit over the others'), for searching a cohort index by inner product. A late-fusion head
    gives its vision head's row (an index holds image embeddings only)."""
    if name not in head.class_names:
        raise InputError(f"class {name!r} is not one of the classifier's classes {list(head.class_names)}")
    w = head.weight.astype(np.float64)
    q = w[head.class_names.index(name)] - w.mean(axis=0)
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise InputError(f"class {name!r}: its weights do not differ from the other classes'; nothing to search for")
    return (q / norm).astype(np.float32)


def with_marks(cm: ClassMap, marked: np.ndarray, rows: np.ndarray) -> ClassMap:
    """``cm`` with the marked tiles set to their class, with probability 1."""
    probs = np.array(cm.probabilities, dtype=np.float32)  # (N, C), a copy
    probs[marked] = 0.0
    probs[marked, rows] = 1.0
    return build_class_map(probs.T, cm.class_names, cm.colors, cm, softmax=False,
                           unknown_threshold=cm.unknown_threshold, templates=cm.templates)


def unsure_tiles(probabilities: np.ndarray, prior: np.ndarray | None = None, *, k: int = 20,
                 exclude: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """The ``k`` tiles where a mark would help most, most useful first.

    A tile scores ``1 - (p1 - p2)`` (the refined model's margin between its two best classes)
    or, when ``prior`` (the map before refining, over the same classes or a prefix of them) is
    given and higher, ``1 - prior[refined class]`` (how much the text prior disagrees).

    Parameters
    ----------
    probabilities : (N, C)
        The refined per-tile probabilities.
    prior : (N, C0), optional
        The prior's probabilities, ``C0 <= C`` (new classes have no prior: no disagreement).
    k
        How many tiles to return.
    exclude
        Tile indices not to propose (the marked ones).
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"unsure_tiles: expected (N, C >= 2) probabilities, got shape {p.shape}")
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    score = 1.0 - (top2[:, 1] - top2[:, 0])
    if prior is not None and np.asarray(prior).ndim == 2 and np.asarray(prior).shape[1] == 0:
        prior = None  # a prior without classes (refine from marks alone) disagrees with nothing
    if prior is not None:
        q = np.asarray(prior, dtype=np.float32)
        if q.ndim != 2 or len(q) != len(p) or q.shape[1] > p.shape[1]:
            raise InputError(f"unsure_tiles: prior {q.shape} does not fit probabilities {p.shape}")
        label = p.argmax(axis=1)
        agree = np.where(label < q.shape[1], q[np.arange(len(q)), np.minimum(label, q.shape[1] - 1)], 1.0)
        score = np.maximum(score, 1.0 - agree)
    score[np.asarray(exclude, dtype=np.int64)] = -np.inf
    k = int(min(max(k, 0), int(np.isfinite(score).sum())))
    top = np.argpartition(-score, k - 1)[:k] if k else np.zeros(0, np.int64)
    return top[np.argsort(-score[top], kind="stable")]


__all__ = [
    "FeatureCentre",
    "class_query",
    "fit_marks",
    "marked_tiles",
    "FitReport",
    "LinearHead",
    "RefineConfig",
    "Refinement",
    "feature_centre",
    "fit_head",
    "head_class_map",
    "mark_rows",
    "marks_only_head",
    "unlabelled_map",
    "check_marks_only",
    "refine",
    "text_head",
    "unsure_tiles",
    "with_marks",
]
