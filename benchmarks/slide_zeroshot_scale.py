"""Slide-level zero-shot over a cohort of cached slides: cost per slide against reading it.

    .venv/bin/python -m benchmarks.slide_zeroshot_scale [--slides 100 200 --tiles 20000 --dim 512 --classes 2]

Writes ``max(--slides)`` slides of ``--tiles`` synthetic unit vectors each into an embedding
cache in the real on-disk format (``EmbeddingCache.open_partial`` / ``append`` / ``finalize``,
the engine's own writer), then, for each cohort size, in one process and interleaved slide by
slide:

- the baseline: reading the slide's cached embeddings (``EmbeddingCache.load``);
- the task: the same read plus :func:`backend.tasks.slide_zero_shot.slide_zero_shot` (class
  vectors from the text-feature cache after the first slide, cosine similarities, MI-Zero top-k
  pooling with k = 50, evidence tiles), i.e. ``Backend.slide_zero_shot``'s work once a slide is
  embedded, without opening the slide file for its fingerprint.

Prints per-slide medians and totals, and the task / read ratio (target <= 1.2) per cohort size,
and how the total grows from the smaller cohort to the larger (linear: x size ratio).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class _TextModel:
    """Stands in for a CLIP model's text tower: fixed random unit vectors per prompt."""

    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id, self.dim, self.logit_scale = model_id, dim, 100.0

    def encode_text(self, prompts: list[str]) -> np.ndarray:
        out = np.stack([np.random.default_rng(abs(hash(p)) % 2**32).normal(size=self.dim) for p in prompts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def write_cohort(cache, n: int, tiles: int, dim: int, model_id: str) -> list:
    """``n`` finished stores of ``tiles`` clustered unit vectors each; their keys."""
    from backend.embed.cache import CacheKey, StoreHeader
    from backend.slides import TileSpec

    spec = TileSpec()
    side = int(np.ceil(np.sqrt(tiles)))
    grid = np.stack(np.divmod(np.arange(tiles), side), axis=1).astype(np.int64)
    coords = grid[:, ::-1] * 224
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(32, dim)).astype(np.float32)
    keys = []
    for i in range(n):
        key = CacheKey(f"bench-slide-{i:04d}", model_id, spec.key())
        header = StoreHeader(key, dataclasses.asdict(spec), 224.0, 224.0, (0.0, 0.0), (side, side),
                             (side * 224, side * 224), 0.5, dim)
        store = cache.open_partial(header, coords, grid)
        for a in range(0, tiles, 4096):
            b = min(tiles, a + 4096)
            v = centres[rng.integers(0, len(centres), b - a)] + 0.5 * rng.normal(size=(b - a, dim)).astype(np.float32)
            store.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        store.finalize()
        keys.append(key)
    return keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, nargs="+", default=[100, 200])
    p.add_argument("--tiles", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--cache", default=None, help="where to write the synthetic cache (default: a temp dir)")
    args = p.parse_args(argv)

    from backend.embed import EmbeddingCache
    from backend.tasks.slide_zero_shot import PoolingOptions, slide_zero_shot
    from backend.tasks.zero_shot import TextFeatureCache

    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    model = _TextModel("bench-model", args.dim)
    labels = [f"class {i}" for i in range(args.classes)]
    with tempfile.TemporaryDirectory(prefix="histoclip-slide-bench-", dir=args.cache) as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings")
        t0 = time.perf_counter()
        keys = write_cohort(cache, max(args.slides), args.tiles, args.dim, model.model_id)
        print(f"wrote {len(keys)} slides x {args.tiles:,} tiles x {args.dim} dims in {time.perf_counter() - t0:.1f} s "
              f"({sum(f.stat().st_size for f in Path(tmp).rglob('*') if f.is_file()) / 2**30:.2f} GiB on disk)")
        text_cache = TextFeatureCache()
        totals = {}
        for n in sorted(args.slides):
            read_s, task_s = [], []
            for key in keys[:n]:
                t = time.perf_counter()
                emb = cache.load(key)
                read_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                emb = cache.load(key)
                verdict = slide_zero_shot(emb, labels, model, pooling=PoolingOptions(k=50), text_cache=text_cache)
                task_s.append(time.perf_counter() - t)
                assert verdict.n_pooled == 50
            r, k = np.median(read_s) * 1e3, np.median(task_s) * 1e3
            totals[n] = sum(task_s)
            ok = "PASS" if k <= 1.2 * r else "MISSED"
            print(f"{n:4d} slides: read {r:7.1f} ms/slide (median), read + slide zero-shot {k:7.1f} ms/slide; "
                  f"ratio {k / r:.3f} (target <= 1.2: {ok}); task total {sum(task_s):.1f} s, read total {sum(read_s):.1f} s")
        if len(totals) > 1:
            (a, ta), (b, tb) = sorted(totals.items())[0], sorted(totals.items())[-1]
            print(f"task total x{tb / ta:.2f} from {a} to {b} slides (linear: x{b / a:.2f})")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
