"""Test helpers for model loading: tissue-like images, and hub caches laid out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Tissue-like test images: low-frequency colour fields plus fine noise, uint8 (n, h, w, 3)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((n, 3, 9, 9)).astype(np.float32))
    big = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    big = big + 0.08 * torch.from_numpy(rng.standard_normal((n, 3, h, w)).astype(np.float32))
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_hub_repo(hub: Path, repo: str, files: dict[str, bytes], rev: str) -> Path:
    """Lay out ``repo`` in a Hugging Face hub cache the way huggingface_hub does (minus blobs)."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / rev
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot
