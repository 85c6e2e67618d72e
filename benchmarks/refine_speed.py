"""Few-shot refine and classifier speed on 100,000 cached tiles x 10 classes.

    .venv/bin/python -m benchmarks.refine_speed [--tiles 100000 --classes 10 --marks 50 --repeats 7]

Synthetic cached embeddings shaped like CLIP's (dimension 512, unit norm, a shared common
component plus one of ``--classes`` cluster directions and noise), text class vectors near the
clusters, and ``--marks`` marked tiles spread over the classes. In one process, interleaved
``--repeats`` times, it times (median wall and CPU):

- the baseline: relabelling the tiles from cached text features (``zero_shot.classify`` plus
  the label and probability maps a viewer shows), the path the zero-shot tab already takes;
- refine: centring over all tiles, fitting the head on the marks, applying it, imposing the
  marks, and the same maps (target < 1 s);
- applying a saved classifier: loading the bundle from disk and classifying (target < 100 ms);

and prints each as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, classes: int, dim: int = 512, seed: int = 0):
    """(SlideEmbeddings, text features (C, D), per-tile class) with CLIP-like geometry."""
    from backend.embed import SlideEmbeddings

    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(classes, size=n)
    v = 2.0 * common + centres[y] + 2.0 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    text = centres + 3.0 * rng.standard_normal((classes, dim)).astype(np.float32) / np.sqrt(dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    side = int(np.ceil(np.sqrt(n)))
    cells = np.stack(np.divmod(np.arange(n), side), axis=1)
    emb = SlideEmbeddings(
        slide_fingerprint="bench", slide_name="bench", slide_path="bench", model_id="bench", spec=None,
        spec_key="bench", coords=cells[:, ::-1] * 224, tile_extent=224.0, grid_index=cells,
        grid_shape=(side, side), vectors=v, stride=224.0, origin=(0.0, 0.0),
    )
    return emb, text.astype(np.float32), y


class Timer:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.process_time() - self._c)

    def median_ms(self) -> tuple[float, float]:
        return 1000 * statistics.median(self.wall), 1000 * statistics.median(self.cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--marks", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    from backend.models.classifier import Classifier, load_classifier, save_classifier
    from backend.palette import class_colors
    from backend.tasks.refine import head_class_map, refine, text_head
    from backend.tasks.zero_shot import ClassPrompt, classify

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    emb, text, y = synthetic(args.tiles, args.classes)
    names = [f"class {i}" for i in range(args.classes)]
    prompts = [ClassPrompt(n) for n in names]
    colors = list(class_colors(args.classes))
    head = text_head(text, 100.0, names, colors)
    rng = np.random.default_rng(1)
    marked = rng.choice(args.tiles, args.marks, replace=False)
    mark_names = [names[int(c)] for c in y[marked]]
    print(f"{args.tiles:,} tiles x {emb.embed_dim} dims, {args.classes} classes, {args.marks} marks")

    base, ref, apply, apply_only = Timer(), Timer(), Timer(), Timer()
    with tempfile.TemporaryDirectory(prefix="histoclip-refine-bench-") as tmp:
        r = refine(emb, head, marked, mark_names)
        bundle = save_classifier(Classifier("bench", r.head, "bench", "bench", {"tile_size": 224, "mpp": 0.5}),
                                 Path(tmp) / "clf")
        for _ in range(args.repeats):
            with base:
                cm = classify(emb, text, prompts, 100.0)
                cm.label_map, cm.probability_maps  # noqa: B018 - the maps a viewer shows
            with ref:
                r = refine(emb, head, marked, mark_names)
                r.class_map.label_map, r.class_map.probability_maps  # noqa: B018
            with apply:
                clf = load_classifier(bundle)
                cm2 = head_class_map(emb, clf.head)
                cm2.label_map, cm2.probability_maps  # noqa: B018
            with apply_only:
                head_class_map(emb, clf.head).label_map  # noqa: B018
    zs_acc = float(((cm.labels - 1) == y).mean())
    ref_acc = float(((r.class_map.labels - 1) == y).mean())
    print(f"accuracy on the synthetic truth: zero-shot {zs_acc:.3f}, refined {ref_acc:.3f}; "
          f"head fits {r.report.marks_fit}/{len(marked)} marks in {r.report.iterations} L-BFGS steps")
    b_wall, b_cpu = base.median_ms()
    rows = [
        ("baseline: relabel from cached text features", base, None),
        ("refine (centre, fit, apply, marks, maps)", ref, 1000.0),
        ("apply a saved classifier (load + classify + maps)", apply, 100.0),
        ("  of which classify + label map", apply_only, None),
    ]
    print_rows(rows, b_wall)
    return 0


def print_rows(rows: list[tuple[str, Timer, float | None]], baseline_ms: float, width: int = 52) -> None:
    """One line per ``(label, timer, target ms or None)``: medians, the ratio to the baseline,
    PASS/MISSED against the target; then the load average (the machine may be shared)."""
    for label, t, target in rows:
        wall, cpu = t.median_ms()
        verdict = "" if target is None else f"  target < {target:.0f} ms: {'PASS' if wall < target else 'MISSED'}"
        print(f"{label:{width}s} {wall:8.1f} ms wall {cpu:8.1f} ms CPU   x{wall / baseline_ms:5.2f} baseline{verdict}")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    raise SystemExit(main())
