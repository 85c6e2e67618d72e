"""Which tiles a ClipCap caption comes from: leave-one-tile-out log-likelihoods.

A region's caption is decoded from the pooled (mean, re-normalised) embedding of its tiles.
Tile ``i``'s support for a caption is how much the caption's log-likelihood drops when the
region is pooled without it: ``log p(caption | pool(all)) - log p(caption | pool(all but i))``.
All N + 1 pooled embeddings are scored by teacher forcing in batched decoder passes (one
forward per batch of rows, no decoding), so grounding a 64-tile region costs a few caption
times, not 64. Token log-probabilities are kept per token, so a phrase's support is the same
difference summed over the tokens of its words only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from backend.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from backend.caption.captioner import Captioner


def leave_one_out_pools(vectors: np.ndarray) -> np.ndarray:
    """(N + 1, D): the region's pooled embedding, then the pool without each tile in turn.

    Pools are means re-normalised to unit length (:func:`backend.embed.region.pool`); with a
    single tile, "without it" is the zero vector's direction, kept as zeros.
    """
    from backend.embed.region import pool

    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or len(v) == 0:
        raise InputError(f"leave-one-out: need (N, D) tile embeddings with N >= 1, got shape {v.shape}")
    total = v.sum(axis=0, dtype=np.float64)
    without = (total[None, :] - v) / max(len(v) - 1, 1)
    norms = np.linalg.norm(without, axis=1, keepdims=True)
    without = np.where(norms > 1e-12, without / np.maximum(norms, 1e-12), 0.0)
    return np.concatenate([pool(v)[None, :], without.astype(np.float32)])


def caption_token_spans(tokenizer: PreTrainedTokenizerBase, caption: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``caption`` (EOS appended) and each token's character span in it.

    Spans come from decoding growing prefixes of the ids, which works for any tokenizer
    (byte-level BPE, word piece) without offset support; EOS gets the empty span at the end.
    """
    ids = list(tokenizer(caption, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputError("grounding: the caption is empty after tokenisation")
    spans = []
    prev = 0
    for j in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:j], skip_special_tokens=True))
        spans.append((prev, end))
        prev = end
    eos = int(tokenizer.eos_token_id)
    return ids + [eos], spans + [(prev, prev)]


@torch.inference_mode()
def token_log_probs(
    captioner: Captioner, embeddings: np.ndarray, token_ids: Sequence[int], *, batch_size: int = 32
) -> np.ndarray:
    """(B, T) log-probabilities of ``token_ids`` given each row's prefix, by teacher forcing.

    Every row scores the same tokens, so rows batch without padding; each batch is one
    decoder forward pass.
    """
    model = captioner.model
    was_training = model.training
    model.eval()
    try:
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=model.device)[None, :]
        tokens = model.decoder.get_input_embeddings()(ids)
        out = []
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32), device=model.device)
        for start in range(0, len(x), batch_size):
            prefix = model.prefix(x[start : start + batch_size])
            b, k = prefix.shape[:2]
            inputs = torch.cat([prefix, tokens.expand(b, -1, -1).to(prefix.dtype)], dim=1)
            logits = model.decoder(inputs_embeds=inputs, attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long,
                                                                                   device=prefix.device)).logits
            # position k-1+t predicts token t
            logp = logits[:, k - 1 : -1].float().log_softmax(-1)
            out.append(logp.gather(-1, ids.expand(b, -1)[..., None]).squeeze(-1).cpu().numpy())
        return np.concatenate(out)
    finally:
        model.train(was_training)


def leave_one_out_support(
    captioner: Captioner,
    vectors: np.ndarray,
    caption: str,
    spans: Sequence[tuple[int, int]] = (),
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """Per-tile support of ``caption`` and of each character span (a phrase) in it.

    Parameters
    ----------
    captioner
        The ClipCap captioner (its CLIP model made ``vectors``).
    vectors
        (N, D) embeddings of the region's tiles.
    caption
        The caption (generated or typed).
    spans
        ``[start, end)`` character spans of phrases in ``caption``.
    batch_size
        Pooled embeddings per decoder pass.

    Returns
    -------
    (1 + len(spans), N) float32
        Row 0: the drop in the caption's total log-likelihood when each tile is left out;
        row 1 + j: the same over the tokens overlapping ``spans[j]``.
    """
    ids, token_spans = caption_token_spans(captioner.tokenizer, caption)
    logp = token_log_probs(captioner, leave_one_out_pools(vectors), ids, batch_size=batch_size)
    drop = logp[:1] - logp[1:]  # (N, T): how much each token loses without each tile
    rows = [drop.sum(axis=1)]
    for start, end in spans:
        mask = np.array([s < end and e > start for s, e in token_spans])
        rows.append(drop[:, mask].sum(axis=1) if mask.any() else np.zeros(len(drop), np.float32))
    return np.stack(rows).astype(np.float32)
