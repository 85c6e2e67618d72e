"""Classifier bundles over 100,000 cached tiles: a linear head and a CLIP-IT late-fusion head.

    .venv/bin/python -m benchmarks.classify_scale [--tiles 100000 --classes 10 --text-dim 512 --hidden 256 --repeats 7]

The cached embeddings are refine_speed.py's synthetic CLIP-like vectors (dimension 512, unit
norm). Two classifier bundles are written and, in one process, interleaved ``--repeats`` times,
it times (median wall and CPU):

- the baseline: a plain matmul of the same shapes, ``vectors (N, D) @ weight.T (D, C)``, the
  least any linear classifier of these tiles can cost;
- applying the linear classifier bundle: load it from disk (sha256 checked), the head's logits
  and softmax over every tile, the label map (``Backend.classify``'s work once the slide is
  cached; target < 100 ms, as relabelling is);
- the same for the late-fusion bundle: projection into the text space (``--text-dim``),
  normalisation, the text-space MLP (``--hidden``), the blend, softmax, label map;

and prints each as a ratio to the baseline (the figures to compare across machines).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.refine_speed import Timer, print_rows, synthetic  # refine_speed's synthetic tiles and timer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--text-dim", type=int, default=512, help="text space of the late-fusion projection")
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the text-space MLP")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    from backend.models.classifier import Classifier, load_classifier, save_classifier
    from backend.models.heads import FusionHead, LinearHead
    from backend.palette import class_colors
    from backend.tasks.refine import head_class_map

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    emb, text, _ = synthetic(args.tiles, args.classes)
    c, d, t, h = args.classes, emb.embed_dim, args.text_dim, args.hidden
    names = tuple(f"class {i}" for i in range(c))
    colors = class_colors(c)
    rng = np.random.default_rng(2)
    linear = LinearHead(names, colors, 100.0 * text, rng.normal(size=c))
    layers = ((rng.normal(size=(h, t)) / np.sqrt(t), rng.normal(size=h)),
              (rng.normal(size=(c, h)) / np.sqrt(h), rng.normal(size=c)))
    fusion = FusionHead(names, colors, linear.weight, linear.bias, rng.normal(size=(t, d)) / np.sqrt(d),
                        rng.normal(size=t), layers, 0.5)
    print(f"{args.tiles:,} tiles x {d} dims, {c} classes; late fusion: text space {t}, MLP {t} -> {h} -> {c}")

    base, lin, fus = Timer(), Timer(), Timer()
    tiles = {"tile_size": 224, "mpp": 0.5}
    with tempfile.TemporaryDirectory(prefix="histoclip-classify-bench-") as tmp:
        bundles = [save_classifier(Classifier(k, head, "bench", "bench", tiles), Path(tmp) / k)
                   for k, head in (("linear", linear), ("fusion", fusion))]
        weight = np.array(linear.weight)
        for _ in range(args.repeats):
            with base:
                emb.vectors @ weight.T  # noqa: B018 - the baseline's whole work
            for timer, bundle in ((lin, bundles[0]), (fus, bundles[1])):
                with timer:
                    clf = load_classifier(bundle)
                    head_class_map(emb, clf.head).label_map  # noqa: B018 - the map a viewer shows
    b_wall, _ = base.median_ms()
    rows = [
        ("baseline: plain matmul (N, D) @ (D, C)", base, None),
        ("linear classifier (load + classify + label map)", lin, 100.0),
        ("late-fusion classifier (load + classify + label map)", fus, None),
    ]
    print_rows(rows, b_wall, 54)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
