"""Which few-shot refine method: the measurements behind ``backend/tasks/refine.py``.

    .venv/bin/python -m benchmarks.refine_methods [--draws 20]

On the tests' generated slide of planted real textures (``tests/support/planted_textures.py``:
225 tiles, 5 textures, embedded once with ``test-tiny`` into a temp cache), for several draws
of random marks, prints for each candidate and hyper-parameter setting:

- ``acc@k``: accuracy on the unmarked tiles with ``k`` marks per class (mean, worst draw);
- ``collat``: the share of tiles of *other* classes whose label a single mark changes (mean
  over one mark of each class), i.e. how far one mark flips the slide;
- ``fit``: the share of marks the method itself (before the marks are imposed) labels right.

Two priors: test-tiny's own text classifier (random weights: labels 22 % of tiles right, all as
one class), and a *simulated informative prior* (class vectors from 3 held-out tiles per class
plus noise: labels about two thirds right), where a method must also not lose what the prior
already knew.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = (ROOT / ".." / "shared" / "testdata").resolve()


def planted_features(tmp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, tuple[str, ...]]:
    """(vectors, truth, text weights, logit scale, class names) of the planted slide."""
    from backend.api import SlideRef, TileOptions
    from backend.local import LocalBackend
    from backend.tasks.zero_shot import DEFAULT_TEMPLATES, class_text_features, parse_classes
    from tests.support.planted_textures import CLASSES, planted_tiles, write_tiles

    tiles, truth = planted_tiles(TESTDATA)
    path = write_tiles(tmp / "planted.tif", tiles)
    backend = LocalBackend(cache_dir=tmp / "cache", device="cpu")
    emb = backend.embeddings(SlideRef(str(path)), "test-tiny", TileOptions())
    model = backend.model("test-tiny")
    text = class_text_features(model, parse_classes(CLASSES), DEFAULT_TEMPLATES)
    y = truth[emb.grid_index[:, 0], emb.grid_index[:, 1]]
    return emb.vectors, y, text, float(model.logit_scale), CLASSES


# --- candidates: each returns (N, C) scores for all tiles --------------------------------------


def tip_adapter(v, prior_logits, mv, my, c, *, alpha, beta, centred):
    """Tip-Adapter (Zhang et al. 2022): prior + alpha * exp(-beta (1 - cos(x, key))) @ one-hot."""
    if centred:
        m = v.mean(axis=0)
        v, mv = v - m, mv - m
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        mv = mv / np.linalg.norm(mv, axis=1, keepdims=True)
    aff = np.exp(-beta * (1.0 - v @ mv.T))
    return prior_logits + alpha * aff @ np.eye(c)[my]


def prototypes(v, w0, scale, mv, my, c, *, k, centred):
    """Class vectors blended with the marks' mean: w_c = norm(w0_c + n_c/(n_c + k) * proto_c)."""
    m = v.mean(axis=0) if centred else np.zeros(v.shape[1], np.float32)
    u = v - m
    w = w0.copy()
    for cls in range(c):
        sel = my == cls
        if sel.any():
            p = (mv[sel] - m).mean(axis=0)
            lam = sel.sum() / (sel.sum() + k)
            blend = (1 - lam) * w0[cls] / np.linalg.norm(w0[cls]) + lam * p / np.linalg.norm(p)
            w[cls] = blend / np.linalg.norm(blend)
    # cosine with the (centred) tile: the prior's rows are compared on the same footing
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    return scale * un @ w.T


def logistic(v, w0, scale, mv, my, c, *, weight_pull, bias_pull):
    from backend.tasks.refine import LinearHead, RefineConfig, feature_centre, fit_head

    prior = LinearHead(tuple(map(str, range(c))), ((0, 0, 0),) * c, scale * w0, np.zeros(c))
    head, _ = fit_head(prior, feature_centre(v), mv, my, RefineConfig(weight_pull=weight_pull, bias_pull=bias_pull))
    return v @ head.weight.T + head.bias


def evaluate(name, method, v, y, w0, scale, draws) -> None:
    c = int(y.max()) + 1
    prior_pred = (scale * v @ w0.T).argmax(axis=1)
    row = [name]
    for k in (1, 2, 5):
        accs, fits = [], []
        for s in range(draws):
            rng = np.random.default_rng(s)
            idx = np.concatenate([rng.choice(np.flatnonzero(y == cls), k, replace=False) for cls in range(c)])
            pred = method(v, w0, scale, v[idx], y[idx], c).argmax(axis=1)
            rest = np.setdiff1d(np.arange(len(y)), idx)
            accs.append((pred[rest] == y[rest]).mean())
            fits.append((pred[idx] == y[idx]).mean())
        row.append(f"acc@{k} {np.mean(accs):.3f} ({np.min(accs):.3f})")
    collat, changed = [], []
    for cls in range(c):
        i = np.flatnonzero(y == cls)[0]
        pred = method(v, w0, scale, v[[i]], y[[i]], c).argmax(axis=1)
        other = y != cls
        collat.append((pred[other] != prior_pred[other]).mean())
        changed.append((pred != prior_pred).mean())
    row.append(f"collat {np.mean(collat):.3f} changed {np.mean(changed):.3f}")
    row.append(f"fit@5 {np.mean(fits):.2f}")
    print("  ".join(row), flush=True)


def candidates():
    for centred in (False, True):
        for alpha in (5.0, 20.0, 50.0):
            for beta in (5.0, 50.0):
                yield (f"tip-adapter {'centred' if centred else 'raw'} a={alpha:g} b={beta:g}",
                       lambda v, w0, s, mv, my, c, a=alpha, b=beta, ce=centred: tip_adapter(
                           v, s * v @ w0.T, mv, my, c, alpha=a, beta=b, centred=ce))
    for centred in (False, True):
        for k in (0.5, 2.0):
            yield (f"prototypes {'centred' if centred else 'raw'} k={k:g}",
                   lambda v, w0, s, mv, my, c, k=k, ce=centred: prototypes(v, w0, s, mv, my, c, k=k, centred=ce))
    for wp in (0.03, 0.1, 0.3, 1.0):
        for bp in (0.1, 0.3, 1.0, 3.0):
            yield (f"logistic pull w={wp:g} b={bp:g}",
                   lambda v, w0, s, mv, my, c, wp=wp, bp=bp: logistic(v, w0, s, mv, my, c, weight_pull=wp, bias_pull=bp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--prior-noise", type=float, default=1.5)
    parser.add_argument("--prior-seed", type=int, default=123)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        v, y, w0, scale, names = planted_features(Path(tmp))
    v = v.astype(np.float32)
    print(f"{len(y)} tiles, classes {names}, counts {np.bincount(y).tolist()}")
    zs = (scale * v @ w0.T).argmax(axis=1)
    print(f"test-tiny zero-shot accuracy {(zs == y).mean():.3f}")
    # A simulated informative prior: class vectors from 3 held-out tiles per class (centred),
    # plus noise, scaled so its logits vary across tiles as a CLIP zero-shot's do (std ~2).
    rng = np.random.default_rng(args.prior_seed)
    m = v.mean(axis=0)
    sim = np.stack([v[rng.choice(np.flatnonzero(y == c), 3, replace=False)].mean(axis=0) - m for c in range(len(names))])
    sim = sim / np.linalg.norm(sim, axis=1, keepdims=True)
    sim = sim + args.prior_noise * rng.standard_normal(sim.shape) / np.sqrt(v.shape[1])
    sim_scale = 2.0 / float(np.std((v - m) @ sim.T))
    sim = sim - (m @ sim.T)[:, None] * m / float(m @ m)  # no per-class offset from the common part
    print(f"simulated prior accuracy {((v @ sim.T).argmax(axis=1) == y).mean():.3f}")
    for prior_name, w, s in (("test-tiny text prior", w0, scale), ("simulated informative prior", sim, sim_scale)):
        print(f"\n== {prior_name}")
        for name, method in candidates():
            evaluate(name, method, v, y, w, s, args.draws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
