"""CLIP fine-tuning throughput: the trainer's step vs. the model's own forward + backward.

(a) ceiling: ViT-B-32 (random weights), CLIP loss, forward + backward + AdamW on pixels and
    tokens already in memory (the trainer's own step code, no data);
(b) trainer: ``training.clip.train.train`` on a table of 256 px PNG tiles cut from the real
    CMU-1-Small-Region slide, reading, augmenting (flips, 90-degree turns, HED jitter) and
    preprocessing them in ``--workers`` loader processes behind the compute.

Both at batch 32, CPU, 2 threads, in one process. Each round runs (a) then (b): ``--warmup``
steps of each are not timed (allocator, first-touch, the loader filling its queue), then
``--steps`` are. Rounds alternate so a change of load hits both; the figure is the median over
rounds of the paired ratio b / a (medians of a and b are printed too). Target: b / a >= 0.85.

    .venv/bin/python -m benchmarks.train_throughput            # ~20 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / ".." / "shared" / "testdata" / "slides" / "CMU-1-Small-Region.svs"


def make_tiles(folder: Path, n: int, size: int = 256) -> Path:
    """``n`` PNG tiles from the real slide with captions, and their table."""
    import pandas as pd
    from PIL import Image

    from backend.slides import open_slide

    rng = np.random.default_rng(0)
    rows = []
    with open_slide(SLIDE) as s:
        w, h = s.dimensions
        for i in range(n):
            x, y = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
            path = folder / f"tile-{i:04d}.png"
            Image.fromarray(s.read_region((x, y), 0, (size, size))).save(path)
            rows.append({"image": path.name, "caption": f"h&e tissue region number {i}"})
    table = folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def ceiling(model, batch: int, warmup: int, steps: int) -> float:
    """Pairs/s of forward + backward + AdamW on in-memory tensors (``warmup`` steps not timed)."""
    import torch

    from training.clip.losses import TrainingLoss
    from training.clip.step import MicroBatch, accumulated_backward
    from training.clip.tuning import ClipNet

    core = ClipNet(model, TrainingLoss("clip")).train()
    opt = torch.optim.AdamW([p for p in core.parameters() if p.requires_grad], lr=1e-6)
    size = model.preprocessing.image_size
    mb = MicroBatch(torch.randn(batch, 3, size, size), model.tokenize([f"caption {i}" for i in range(batch)]))
    stamps = []
    for _ in range(warmup + steps):
        accumulated_backward(core, core, lambda f, g: core.loss(f, core.clip.logit_scale, g), [mb])
        torch.nn.utils.clip_grad_norm_(core.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    start = stamps[warmup - 1] if warmup else stamps[0] - (stamps[1] - stamps[0])
    return batch * steps / (stamps[-1] - start)


def trainer(bundle: Path, table: Path, out: Path, batch: int, warmup: int, steps: int, workers: int) -> float:
    """Pairs/s of the trainer's steps after its first ``warmup`` (timed from step ends)."""
    from training.clip.config import ClipTrainConfig
    from training.clip.train import train

    stamps: list[float] = []

    def progress(p) -> None:
        if p.stage.startswith("train"):
            stamps.append(time.perf_counter())

    config = ClipTrainConfig(model=str(bundle), train=str(table), out_dir=out, epochs=1, batch_size=batch,
                             workers=workers, device="cpu", warmup_steps=1, lr=1e-6)
    train(config, progress=progress)
    if len(stamps) < warmup + steps:
        raise RuntimeError(f"the trainer took {len(stamps)} steps, fewer than warm-up + timed {warmup + steps}")
    timed = stamps[warmup - 1 : warmup + steps]  # the ends of step `warmup` .. the last timed step
    return batch * steps / (timed[-1] - timed[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side and round (>= 1)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the figure is the median of their b/a")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="trainer's data-loading processes")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from backend.models import save_bundle
    from benchmarks.embed_throughput import vit_b32_random

    if args.warmup < 1 or args.steps < 2 or args.rounds < 1:
        p.error("needs --warmup >= 1, --steps >= 2, --rounds >= 1")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, _ = vit_b32_random()
        bundle = save_bundle(model, tmp / "vit-b32-random")
        table = make_tiles(tmp, args.batch_size * (args.warmup + args.steps))
        a, b = [], []
        for r in range(args.rounds):
            a.append(ceiling(model, args.batch_size, args.warmup, args.steps))
            b.append(trainer(bundle, table, tmp / f"run{r}", args.batch_size, args.warmup, args.steps, args.workers))
            print(f"round {r + 1}: (a) {a[-1]:.2f} pairs/s   (b) {b[-1]:.2f} pairs/s   b/a {b[-1] / a[-1]:.2f}",
                  flush=True)
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    ratio = float(np.median(ratios))
    print(f"(a) model forward + backward + AdamW, tensors in memory: median {np.median(a):6.2f} pairs/s")
    print(f"(b) trainer step with loading + augmentation ({args.workers} worker): median {np.median(b):6.2f} pairs/s")
    verdict = "PASS" if ratio >= 0.85 else "MISSED"
    print(f"b/a = {ratio:.2f} (median of {args.rounds} rounds' ratios, {min(ratios):.2f}..{max(ratios):.2f}; "
          f"{args.steps} timed steps each after {args.warmup} warm-up; target >= 0.85)   {verdict}")
    print(f"load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (shared machine)")
    if args.json:
        args.json.write_text(json.dumps({"a": a, "b": b, "ratios": ratios, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
