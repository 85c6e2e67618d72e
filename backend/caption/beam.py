"""Beam search for ClipCap prefixes: transformers' beam search rule, with the prefix run once.

Why not ``generate(num_beams=...)``, which :mod:`backend.caption.decode` uses for greedy and
nucleus decoding: with a prefix given as embeddings, ``generate`` copies it to every beam before
the first forward pass (3 x 10 rows through the decoder instead of 10), and its beam loop
pays, per step, for work the captioner does not use (a copy of the 3 x 50k log-probabilities for
``output_scores``, a ``MinNewTokensLengthLogitsProcessor`` that rebuilds an EOS mask over the
vocabulary and clones the scores, stopping-criteria objects, a cache reorder even when every beam
kept its parent). Here the prefix runs once (batch of regions), its KV cache is repeated to the
beams (``Cache.batch_repeat_interleave``), each step is one batched forward of all beams, and
the cache is reordered (``Cache.reorder_cache``) only when a beam changed parent.

The selection rule is transformers' own (``GenerationMixin._beam_search``, checked on 5.25) with
``early_stopping=True``, so the n-best sequences and scores are the same (test:
``tests/backend/test_beam_search.py``): per step, the top ``2 * num_beams`` continuations of all
beams by accumulated log-probability; the best ``num_beams`` of them that did not end (EOS or
the length limit) run on; those among the top ``num_beams`` that ended become hypotheses scored
``sum(log p) / n_tokens ** length_penalty``, the best ``num_beams`` hypotheses kept; a region is
done once it holds ``num_beams`` hypotheses. Repetition controls are transformers' public logits
processors, applied to the log-probabilities as ``generate`` applies them. Only
:class:`~backend.caption.config.DecodeConfig`'s controls apply: extra settings a decoder might
carry in its own ``generation_config`` (``bad_words_ids``, ...; the bundles ``training`` writes
carry none) are not read.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, cast

import torch

from backend.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from backend.caption.config import DecodeConfig

_NEG = -1.0e9  # transformers' "ruled out" score: added, not assigned, so the arithmetic matches


def _forward_params(decoder: PreTrainedModel) -> set[str]:
    """The arguments of the decoder class's forward (of the class: an instance may be wrapped)."""
    return set(inspect.signature(type(decoder).forward).parameters)


def _processors(config: DecodeConfig) -> list:
    """transformers' logits processors for the repetition controls, in ``generate``'s order."""
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    out: list = []
    if config.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        out.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    return out


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b, j], ...]``: gather along the beam dimension (dim 1)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


@torch.inference_mode()
def beam_search(
    decoder: PreTrainedModel,
    prefix: torch.Tensor,
    config: DecodeConfig,
    eos_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam-search captions after a batch of prefix embeddings.

    Parameters
    ----------
    decoder
        A transformers causal LM whose forward takes ``inputs_embeds`` and returns a ``Cache``.
    prefix
        (B, k, d) prefix embeddings, one row per region.
    config
        Decoding settings: ``num_beams``, ``n_best``, lengths, ``length_penalty`` and the
        repetition controls are used.
    eos_id, pad_id
        End-of-sequence token, and the filler after it.

    Returns
    -------
    sequences, scores
        (B * n_best, T) generated tokens (EOS included, ``pad_id`` after it; T <= max_new_tokens)
        and their (B * n_best,) length-normalised scores, each region's best first.
    """
    from transformers.cache_utils import Cache

    b, k = prefix.shape[:2]
    n, t_max = config.num_beams, config.max_new_tokens
    rows, device = b * n, prefix.device
    params = _forward_params(decoder)
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
    first: dict = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # logits of the last position only
    mask = torch.ones(rows, k + t_max, dtype=torch.long, device=device)
    out = decoder(inputs_embeds=prefix, attention_mask=mask[:b, :k], use_cache=True, **first)
    cache = out.cache if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)
    if not isinstance(cache, Cache):
        raise ModelError(f"captioner decoder {type(decoder).__name__}: beam search needs a transformers KV cache "
                         f"from its forward pass, got {type(cache).__name__}")
    cache.batch_repeat_interleave(n)  # the prefix's keys and values, once per beam
    logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
    del out
    processors = _processors(config)

    k_keep = 2 * n  # transformers keeps max(2, 1 + n_eos) * num_beams candidates: one EOS token here
    top_mask = torch.arange(k_keep, device=device) < n
    running = torch.full((b, n, t_max), pad_id, dtype=torch.long, device=device)
    running_scores = torch.zeros(b, n, device=device)
    running_scores[:, 1:] = _NEG  # all beams start equal: only the first one's continuations count
    done = running.clone()
    done_scores = torch.full((b, n), _NEG, device=device)
    is_done = torch.zeros(b, n, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    identity = torch.arange(rows, device=device)
    offset = (torch.arange(b, device=device) * n)[:, None]
    cur = 0
    while True:
        log_probs = logits.log_softmax(-1)
        if processors:
            seen = running.view(rows, t_max)[:, :cur]
            for processor in processors:
                log_probs = processor(seen, log_probs)
        if cur < config.min_new_tokens:
            log_probs[:, eos_id] = float("-inf")
        vocab = log_probs.shape[-1]
        acc = (log_probs.view(b, n, vocab) + running_scores[:, :, None]).view(b, n * vocab)
        top_scores, top_index = torch.topk(acc, k_keep)
        parent = top_index // vocab
        token = top_index % vocab
        top_seqs = _take(running, parent)
        top_seqs[:, :, cur] = token
        ended = (token == eos_id) | (cur + 1 >= t_max)

        # the best n candidates that did not end run on
        live_scores = top_scores + ended.float() * _NEG
        keep = torch.topk(live_scores, n)[1]
        running = _take(top_seqs, keep)
        running_scores = _take(live_scores, keep)
        beam_idx = (_take(parent, keep) + offset).view(rows)

        # ended candidates among the top n become hypotheses, if they beat the ones kept
        new = top_scores / float(cur + 1) ** config.length_penalty
        new = new + is_done.all(-1, keepdim=True).float() * _NEG
        new = new + (~improvable).float() * _NEG
        new = new + (~(ended & top_mask)) * _NEG
        best = torch.topk(torch.cat((done_scores, new), 1), n)[1]
        done = _take(torch.cat((done, top_seqs), 1), best)
        done_scores = _take(torch.cat((done_scores, new), 1), best)
        is_done = _take(torch.cat((is_done, ended & top_mask), 1), best)

        cur += 1
        # can a running beam still beat the worst hypothesis kept? (transformers' heuristic)
        best_running = running_scores[:, :1] / float(cur) ** config.length_penalty
        worst_done = torch.where(is_done, done_scores.min(1, keepdim=True)[0], _NEG)
        improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
        if not (bool(improvable.any()) and not bool(is_done.all()) and not bool(ended.all())):
            break
        if not torch.equal(beam_idx, identity):
            cache.reorder_cache(cast(torch.LongTensor, beam_idx))
        tokens = running.view(rows, t_max)[:, cur - 1 : cur]
        out = decoder(input_ids=tokens, attention_mask=mask[:, : k + cur], use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1, :].float()
        del out
    m = config.n_best
    return done[:, :m, :cur].reshape(b * m, cur), done_scores[:, :m].reshape(b * m)
