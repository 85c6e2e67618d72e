""""Slides like this one": which slide signature ranks slides by shared tissue? A measurement.

    .venv/bin/python -m benchmarks.slide_signature [--model BUNDLE] [--out DIR]

Slides of real textures (tests/support/slide_level_data.py: crops of ../shared/testdata tiles
on an 8 x 8 grid of 224 px tiles) and test-tiny fine-tuned on them (or ``--model``, a bundle of
an earlier run). The query is a background texture with a lesion block of another texture;
the candidates are: the same two textures (the lesion elsewhere), the same background with a
*different* lesion, and two other textures entirely. For lesion blocks of 4, 9 and 16 tiles,
it prints each signature's score of every candidate, the margin between the right slides (two
of the same textures: the lower of their scores) and the hard wrong one (same background,
other lesion), and that margin over the difference between the two right slides (how far the
margin stands out of slide-to-slide variation):

- ``mean``: cosine of the slides' mean embeddings;
- ``match``: share of the query's tiles with a close match in the candidate
  (:func:`backend.tasks.slide_search.rank_slides`), a close match being at least the
  ``q``-quantile of the query tiles' similarities to their nearest other query tile, for
  several ``q``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = (ROOT / ".." / "shared" / "testdata").resolve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a fine-tuned bundle (default: fine-tune test-tiny now, ~2 min)")
    p.add_argument("--out", default=None, help="working folder, kept (default: a temp dir)")
    args = p.parse_args(argv)

    from backend import api
    from backend.local import LocalBackend
    from backend.tasks.slide_search import rank_slides
    from tests.support.slide_level_data import BACKGROUND, OTHER, PLANTED, fine_tune, planted_slide

    keep = contextlib.nullcontext(args.out) if args.out else tempfile.TemporaryDirectory(prefix="histoclip-signature-")
    with keep as tmp:
        root = Path(tmp)
        tuned = root / "tune" / "run" / "model"  # kept in --out: a second run reuses it
        model = args.model or (str(tuned) if tuned.is_dir() else str(fine_tune(TESTDATA, root / "tune")))
        lesion, other_lesion = PLANTED
        print(f"model {model}; background texture {BACKGROUND}, lesion {lesion}, other lesion {other_lesion}")
        with LocalBackend(cache_dir=root / "cache", device="cpu") as backend:
            def vectors(path: Path) -> np.ndarray:
                return backend.embeddings(api.SlideRef(str(path)), model).vectors

            for rows in (2, 3, 4):  # lesion blocks of 4, 9, 16 tiles
                block = ((2, 2 + rows), (3, 3 + rows))
                elsewhere = ((8 - rows, 8), (0, rows))
                q = planted_slide(TESTDATA, root / f"q{rows}.tif", lesion, block=block, seed=100 + rows)
                cands = {
                    "same textures": planted_slide(TESTDATA, root / f"same{rows}.tif", lesion, block=elsewhere,
                                                   seed=200 + rows),
                    "same textures 2": planted_slide(TESTDATA, root / f"same2-{rows}.tif", lesion, block=block,
                                                     seed=500 + rows),
                    "same background, other lesion": planted_slide(TESTDATA, root / f"half{rows}.tif", other_lesion,
                                                                   block=block, seed=300 + rows),
                    "other textures": planted_slide(TESTDATA, root / f"other{rows}.tif", 1, background=OTHER,
                                                    block=block, seed=400 + rows),
                }
                qv = vectors(q)
                cv = [(name, vectors(path)) for name, path in cands.items()]
                print(f"\nlesion of {rows * rows} tiles ({100 * rows * rows / 64:.0f} % of the slide):")
                for method, quantile in (("mean", 0.0), ("match", 0.5), ("match", 0.1), ("match", 0.05),
                                         ("match", 0.02)):
                    scores = dict(rank_slides(qv, cv, method=method, quantile=quantile))
                    right = min(scores["same textures"], scores["same textures 2"])
                    margin = right - scores["same background, other lesion"]
                    noise = abs(scores["same textures"] - scores["same textures 2"])
                    order = sorted(scores, key=lambda k: -scores[k])
                    ok = set(order[:2]) == {"same textures", "same textures 2"}
                    text = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
                    what = method if method == "mean" else f"match q={quantile}"
                    print(f"  {what:13s}: {text}; margin {margin:+.4f}, between same-texture slides {noise:.4f}, "
                          f"margin/that {margin / max(noise, 1e-6):+.1f}; {'right' if ok else 'WRONG'} order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
