"""The CLIP-IT teacher: a small MLP over a frozen CLIP text tower's passage embeddings.

Passage embeddings are computed once, in batches, and cached in the run folder (keyed by the
text model's id and the passages), so a resumed or repeated run reads no text model. The MLP
(``Linear, ReLU, ..., Linear``) is trained full-batch on the pairs table's passages with their
images' labels; with the late-fusion head it classifies the student's projected ("pseudo-text")
features. A passage longer than the text tower's context is an error, never silently cut.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from backend.atomic import atomic_path
from backend.errors import InputError
from training.clipit.data import Pairs

if TYPE_CHECKING:
    from backend.models.clip import ClipModel


def check_context(model: ClipModel, pairs: Pairs) -> None:
    """Raise when a passage has more tokens than ``model``'s text context (it would be truncated)."""
    from training.clipit.passages import token_counter

    count = token_counter(model)
    for k, text in enumerate(pairs.texts):
        n = count(text)
        if n > model.context_length:
            row = int(np.flatnonzero(pairs.row_text == k)[0])
            raise InputError(f"{pairs.source}: row {row}: the passage has {n} tokens, more than the "
                             f"{model.context_length} of {model.model_id!r}'s text context (it would be cut); "
                             "pair with this text model (`python -m training pair --model ...`) so long reports are split")


def text_key(model_name: str, texts: tuple[str, ...]) -> str:
    """The cache key of a run's passage embeddings: the text model's name and the passages."""
    digest = hashlib.sha256(model_name.encode())
    for t in texts:
        digest.update(b"\0" + t.encode())
    return digest.hexdigest()


def text_embeddings(model_name: str, pairs: Pairs, cache: Path, *, device: Any = None) -> tuple[np.ndarray, str]:
    """(M, T) unit-norm embeddings of the passages by ``model_name``'s text tower, and its model id.

    Cached at ``cache`` (``.npz``: key, model id, embeddings) in the run folder: a resumed run
    loads no text model. Passages over the text context are refused (:func:`check_context`).
    """
    key = text_key(model_name, pairs.texts)
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return z["embeddings"], str(z["model_id"])
    from backend.models import load_model
    from training.evaluation.features import text_features

    model = load_model(model_name, device=device)
    check_context(model, pairs)
    emb = text_features(model, list(pairs.texts)).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), model_id=np.array(str(model.model_id)), embeddings=emb)
    return emb, str(model.model_id)


def build_mlp(text_dim: int, hidden: int, n_classes: int) -> nn.Sequential:
    """The teacher's head: ``Linear(T, hidden), ReLU, Linear(hidden, C)``."""
    return nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def mlp_layers(mlp: nn.Sequential) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The (weight, bias) of each Linear layer, in order (the late-fusion head's ``text`` layers)."""
    return tuple((m.weight.detach().cpu().numpy().astype(np.float32), m.bias.detach().cpu().numpy().astype(np.float32))
                 for m in mlp if isinstance(m, nn.Linear))


@dataclass(frozen=True)
class TeacherResult:
    mlp: nn.Sequential
    train_accuracy: float
    epochs: int


def train_teacher(embeddings: np.ndarray, pairs: Pairs, n_classes: int, *, hidden: int, epochs: int, lr: float,
                  seed: int, cache: Path | None = None) -> TeacherResult:
    """Fit the MLP full-batch (Adam, cross-entropy on logits) on each pairs row's passage and label.

    Deterministic for a seed; the weights are cached at ``cache`` (safetensors) under a key of
    the inputs and settings, so a resumed run reuses them.
    """
    from safetensors.torch import load_file, save_file

    x = torch.from_numpy(np.ascontiguousarray(embeddings[pairs.row_text], np.float32))
    y = torch.from_numpy(pairs.row_label)
    key = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()
                         + repr((n_classes, hidden, epochs, lr, seed)).encode()).hexdigest()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = build_mlp(x.shape[1], hidden, n_classes)
        if cache is not None and cache.is_file():
            saved = load_file(str(cache))
            if "key" in saved and bytes(saved.pop("key").tolist()).decode() == key:
                mlp.load_state_dict(saved)
                return TeacherResult(mlp.eval().requires_grad_(False), _accuracy(mlp, x, y), epochs)
        opt = torch.optim.Adam(mlp.parameters(), lr=lr)
        for _ in range(epochs):
            opt.zero_grad()
            nn.functional.cross_entropy(mlp(x), y).backward()
            opt.step()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        blob = {k: v.contiguous() for k, v in mlp.state_dict().items()}
        blob["key"] = torch.tensor(list(key.encode()), dtype=torch.uint8)
        with atomic_path(cache) as tmp:
            save_file(blob, str(tmp))
    return TeacherResult(mlp.eval().requires_grad_(False), _accuracy(mlp, x, y), epochs)


@torch.no_grad()
def _accuracy(mlp: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((mlp(x).argmax(1) == y).float().mean())
