"""ClipCap training data: caption tokens beside precomputed image embeddings, and a resumable,
rank-sharded batch order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from backend.errors import InputError
from training.clipcap.encode import EmbeddingStore
from training.data.tables import read_table

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class CaptionSet:
    """Caption rows with their image embeddings.

    Attributes
    ----------
    images
        Image path per row.
    captions
        Caption text per row.
    token_ids
        Caption tokens per row, truncated, each ending with EOS.
    embeddings
        (n_images, D) float32, one per distinct image.
    image_index
        Row -> index into ``embeddings``.
    """

    images: tuple[str, ...]
    captions: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    embeddings: np.ndarray
    image_index: np.ndarray

    def __len__(self) -> int:
        return len(self.captions)


def tokenize_captions(
    tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_tokens: int
) -> list[tuple[int, ...]]:
    """Token ids without the tokenizer's own specials, cut to ``max_tokens - 1``, plus EOS."""
    if max_tokens < 2:
        raise InputError(f"max caption tokens: must be >= 2, got {max_tokens}")
    eos = int(tokenizer.eos_token_id)
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    return [tuple(row[: max_tokens - 1]) + (eos,) for row in ids]


def load_caption_set(
    table: str | os.PathLike[str],
    store: EmbeddingStore,
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    max_tokens: int = 64,
) -> CaptionSet:
    """Read a prepared split (one row per caption) and attach its embeddings from ``store``.

    Raises
    ------
    InputError
        Missing columns (names the file and column, lists those present), empty captions,
        or images not in the store.
    """
    df = read_table(table, [image_column, caption_column])
    images = [str(p) for p in df[image_column].tolist()]
    captions = [str(c).strip() for c in df[caption_column].tolist()]
    empty = [i for i, c in enumerate(captions) if not c]
    if empty:
        raise InputError(
            f"{table}: {len(empty)} empty caption(s) in column {caption_column!r}, first at row {empty[0]}"
        )
    distinct = list(dict.fromkeys(images))
    position = {p: i for i, p in enumerate(distinct)}
    return CaptionSet(
        images=tuple(images),
        captions=tuple(captions),
        token_ids=tuple(tokenize_captions(tokenizer, captions, max_tokens)),
        embeddings=store.load(distinct),
        image_index=np.array([position[p] for p in images], dtype=np.int64),
    )


@dataclass(frozen=True)
class Batch:
    embeddings: torch.Tensor  # (B, D)
    input_ids: torch.Tensor  # (B, L) right-padded
    attention_mask: torch.Tensor  # (B, L)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.embeddings, self.input_ids, self.attention_mask)))


def collate(data: CaptionSet, rows: Sequence[int], pad_id: int) -> Batch:
    """A right-padded batch of ``rows``."""
    seqs = [data.token_ids[r] for r in rows]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    emb = torch.from_numpy(data.embeddings[data.image_index[list(rows)]])
    return Batch(emb, ids, mask)


def epoch_batches(
    n_rows: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's micro-batches (row indices) for ``epoch``, shuffled.

    The order depends only on (seed, epoch), so a resumed run can skip the batches it already
    took. Rows are dealt round-robin to ranks, each rank getting the same number (the few
    left over are skipped this epoch), so every rank takes the same number of steps, as DDP
    needs.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=g).tolist()
    mine = order[rank::world_size][: n_rows // world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def iter_eval_batches(
    data: CaptionSet, batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[Batch]:
    """Fixed-order batches of this rank's share of ``data`` (for validation)."""
    n = len(data)
    for start in range(rank * batch_size, n, batch_size * world_size):
        yield collate(data, range(start, min(start + batch_size, n)), pad_id)
