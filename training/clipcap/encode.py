"""CLIP image embeddings of a training set, computed once and reused across epochs and runs.

``python -m training encode TABLE [TABLE ...] --model NAME --out DIR``

The store is a directory::

    meta.json          {"format_version": 1, "model_id": ..., "embed_dim": D}
    part-000000.npz    {"paths": str (n,), "embeddings": float32 (n, D)}, L2-normalised
    part-000001.npz    ...

Each part is written atomically (temp file, then rename) after ``shard_size`` images, so an
interrupted run loses at most one part, and a rerun encodes only the images not yet stored.
A store belongs to one CLIP model: opening it with another raises ``ModelMismatchError``.
One writer at a time: two encode runs on the same store would race for part numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backend.api import Progress, ProgressCallback
from backend.atomic import atomic_path, atomic_write_text
from backend.errors import CancelledError, InputError, ModelMismatchError
from backend.models.identity import check_same_weights
from training.data.images import read_rgb

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

META_FILE = "meta.json"
FORMAT_VERSION = 1


class EmbeddingStore:
    """Image path -> CLIP embedding, in append-only parts (see the module docstring).

    Parameters
    ----------
    root
        The store directory (created by :meth:`create`).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise InputError(f"embedding store {self.root}: no {META_FILE}; create it with `python -m training encode`")
        try:
            meta = json.loads(meta_path.read_text())
            self.model_id = str(meta["model_id"])
            self.embed_dim = int(meta["embed_dim"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{meta_path}: unreadable store metadata ({e})") from e

    @classmethod
    def create(cls, root: str | os.PathLike[str], model_id: str, embed_dim: int) -> EmbeddingStore:
        """Open the store at ``root``, creating it for ``model_id`` if new.

        Raises
        ------
        ModelMismatchError
            The store exists and holds another model's embeddings.
        """
        root = Path(root)
        if (root / META_FILE).is_file():
            store = cls(root)
            check_same_weights(f"embedding store {root}", store.model_id, model_id, "Use another --out directory")
            if store.embed_dim != embed_dim:
                raise ModelMismatchError(
                    f"embedding store {root} holds embeddings of dimension {store.embed_dim} of model "
                    f"{store.model_id!r}, not {embed_dim}; use another --out directory"
                )
            return store
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / META_FILE, json.dumps(
            {"format_version": FORMAT_VERSION, "model_id": model_id, "embed_dim": int(embed_dim)}, indent=2))
        return cls(root)

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.npz"))

    def _iter_parts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for part in self.parts():
            try:
                with np.load(part, allow_pickle=False) as data:
                    yield data["paths"], data["embeddings"]
            except (OSError, ValueError, KeyError) as e:
                raise InputError(f"embedding store part {part}: unreadable ({e}); delete it and re-run encode") from e

    def encoded_paths(self) -> set[str]:
        """Paths already in the store."""
        return {str(p) for paths, _ in self._iter_parts() for p in paths.tolist()}

    def append(self, paths: Sequence[str], embeddings: np.ndarray) -> Path:
        """Write one part (atomically)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape != (len(paths), self.embed_dim):
            raise InputError(f"embeddings: expected shape ({len(paths)}, {self.embed_dim}), got {emb.shape}")
        parts = self.parts()
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0  # never reuse a number
        target = self.root / f"part-{index:06d}.npz"
        with atomic_path(target) as tmp:
            np.savez(tmp, paths=np.asarray(list(paths), dtype=str), embeddings=emb)
        return target

    def load(self, paths: Sequence[str]) -> np.ndarray:
        """Embeddings (len(paths), D) float32 in the order of ``paths``.

        Raises
        ------
        InputError
            Some paths are not in the store (names the first few).
        """
        row_of: dict[str, tuple[int, int]] = {}
        blocks = []
        for b, (stored, emb) in enumerate(self._iter_parts()):
            blocks.append(emb)
            for r, p in enumerate(stored.tolist()):
                row_of[p] = (b, r)
        missing = [p for p in dict.fromkeys(paths) if p not in row_of]
        if missing:
            raise InputError(
                f"embedding store {self.root}: {len(missing)} image(s) not encoded, e.g. {missing[:3]}; "
                "run `python -m training encode` on this table first"
            )
        out = np.empty((len(paths), self.embed_dim), dtype=np.float32)
        for i, p in enumerate(paths):
            b, r = row_of[p]
            out[i] = blocks[b][r]
        return out


@dataclass(frozen=True)
class EncodeResult:
    store: Path
    model_id: str
    encoded: int
    already_stored: int


def encode_images(
    paths: Sequence[str],
    clip_model: Encoder,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    shard_size: int = 4096,
    workers: int = 2,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> EncodeResult:
    """Encode image files with ``clip_model`` into the store at ``out_dir`` (resumable).

    Parameters
    ----------
    paths
        Image files (duplicates are encoded once).
    clip_model
        A ``backend.models.ClipModel`` (``model_id``, ``embed_dim``, ``preprocess_batch``,
        ``encode_image_tensors``).
    out_dir
        The store; images already in it are skipped.
    batch_size
        Images per forward pass.
    shard_size
        Images per part file (what an interruption can lose).
    workers
        Threads decoding images ahead of the model.
    progress
        Called with ``Progress(images done, images to do, "encoding images")``.
    cancel
        When set, stops after the current batch, keeping the parts written so far.

    Returns
    -------
    EncodeResult
    """
    import torch

    store = EmbeddingStore.create(out_dir, clip_model.model_id, clip_model.embed_dim)
    wanted = [str(p) for p in dict.fromkeys(str(p) for p in paths)]
    done = store.encoded_paths()
    todo = [p for p in wanted if p not in done]

    def load(path: str) -> torch.Tensor:
        # one image at a time: training images come in any size
        return clip_model.preprocess_batch(read_rgb(path)[None])

    pending_paths: list[str] = []
    pending: list[np.ndarray] = []
    written = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(todo), batch_size):
            if cancel is not None and cancel.is_set():
                break
            batch = todo[start : start + batch_size]
            pixels = torch.cat(list(pool.map(load, batch)))
            pending.append(clip_model.encode_image_tensors(pixels).float().cpu().numpy())
            pending_paths.extend(batch)
            if len(pending_paths) >= shard_size:
                store.append(pending_paths, np.concatenate(pending))
                written += len(pending_paths)
                pending_paths, pending = [], []
            if progress is not None:
                progress(Progress(min(start + batch_size, len(todo)), len(todo), "encoding images"))
    if pending_paths:
        store.append(pending_paths, np.concatenate(pending))
        written += len(pending_paths)
    if written < len(todo):
        raise CancelledError(f"encode: cancelled after {written} of {len(todo)} images; rerun to resume")
    return EncodeResult(store=store.root, model_id=store.model_id, encoded=written,
                        already_stored=len(wanted) - len(todo))


def image_paths_of(tables: Sequence[str | os.PathLike[str]], image_column: str = "image") -> list[str]:
    """The distinct image paths of prepared tables (as written by ``prepare``: absolute)."""
    from training.data.tables import read_table

    out: list[str] = []
    for t in tables:
        df = read_table(t, [image_column])
        out.extend(str(p) for p in df[image_column].tolist())
    return list(dict.fromkeys(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training encode",
        description="Compute CLIP image embeddings of the images in prepared tables, once, into a "
        "resumable store that training and evaluation reuse.",
    )
    p.add_argument("tables", nargs="+", type=Path, help="tables from `prepare` (train/val/test)")
    p.add_argument("--model", required=True, help="CLIP model: registry name, hf-hub: id or bundle path")
    p.add_argument("--out", type=Path, required=True, help="embedding store directory")
    p.add_argument("--image-column", default="image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=4096, help="images per part file")
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: auto)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training encode``; returns the exit code."""
    from backend.models import load_model
    from backend.report import ProgressBar

    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.shard_size < 1:
        raise InputError(f"--batch-size and --shard-size must be >= 1, got {args.batch_size}, {args.shard_size}")
    paths = image_paths_of(args.tables, args.image_column)
    model = load_model(args.model, device=args.device)
    bar = ProgressBar("encode", unit="image")
    try:
        r = encode_images(paths, model, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                          workers=args.workers, progress=bar)
    finally:
        bar.close()
    print(f"encode: {r.encoded} images encoded, {r.already_stored} already stored, model {r.model_id}, store {r.store}")
    return 0
