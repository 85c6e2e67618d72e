"""Image and text features of a registry model, batched, with an on-disk cache for images.

Image features are cached under ``<cache>/eval-features/<key>.npy``, the key being a hash of
the model id and the dataset's content hash, so a second task (or a second run) on the same
images and model reads no pixels. Each image is read and preprocessed on its own (sizes may
differ) by the model's own preprocessing (``ClipModel.preprocess_batch``), in a background
thread pool so decoding overlaps encoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.api import Progress
from backend.atomic import atomic_path

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

_TEXT_BATCH = 256


def _load_pixels(model: Encoder, path: Path) -> Any:
    from training.data.images import read_rgb

    return model.preprocess_batch(read_rgb(path)[None])[0].cpu()


def image_features(
    model: Encoder,
    paths: Sequence[Path],
    *,
    dataset_hash: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    workers: int = 2,
    progress: Callable[[Progress], None] | None = None,
) -> np.ndarray:
    """(N, D) float32 unit-norm image features of the files at ``paths``.

    Parameters
    ----------
    model
        A loaded ``ClipModel``.
    dataset_hash
        Content hash of the files (see ``results.hash_files``); with ``cache_dir`` it keys the
        cache. Without either, nothing is cached.
    """
    import torch

    cache_file = None
    if dataset_hash is not None and cache_dir is not None:
        key = hashlib.sha256(f"{model.model_id}\0{dataset_hash}\0{len(paths)}".encode()).hexdigest()[:32]
        cache_file = Path(cache_dir) / "eval-features" / f"{key}.npy"
        if cache_file.is_file():
            feats = np.load(cache_file)
            if feats.shape == (len(paths), model.embed_dim):
                if progress is not None:
                    progress(Progress(len(paths), len(paths), "cached images"))
                return feats
    out = np.zeros((len(paths), model.embed_dim), np.float32)
    if progress is not None:  # the total before any work: a bar can show its rate and time left
        progress(Progress(0, len(paths), "encoding images"))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        batches = [list(range(s, min(s + batch_size, len(paths)))) for s in range(0, len(paths), batch_size)]
        pending = [pool.map(lambda i: _load_pixels(model, paths[i]), b) for b in batches[:2]]
        for n, b in enumerate(batches):
            pixels = torch.stack(list(pending[n]))
            if n + 2 < len(batches):  # keep two batches being decoded ahead of the model
                pending.append(pool.map(lambda i: _load_pixels(model, paths[i]), batches[n + 2]))
            out[b[0] : b[-1] + 1] = model.encode_image_tensors(pixels).cpu().numpy()
            if progress is not None:
                progress(Progress(b[-1] + 1, len(paths), "encoding images"))
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            np.save(tmp, out)
    return out


def text_features(model: Encoder, texts: Sequence[str]) -> np.ndarray:
    """(M, D) float32 unit-norm text features, in chunks of 256."""
    chunks = [model.encode_text(list(texts[s : s + _TEXT_BATCH])).cpu().numpy() for s in range(0, len(texts), _TEXT_BATCH)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, model.embed_dim), np.float32)
