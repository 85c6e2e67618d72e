"""Decoding captions from ClipCap prefixes: greedy, beam search, nucleus sampling.

Greedy and nucleus decoding use ``transformers``' ``generate(inputs_embeds=...)``: for a
decoder-only model fed a prefix of embeddings it gives what the captioner needs (batched rows,
KV cache, ``no_repeat_ngram_size``, ``repetition_penalty``, ``min_new_tokens``, top-p sampling)
and is maintained against every cache layout and model the library ships (GPT-2, BioGPT, ...).
All rows share the prefix length k, so no left padding is needed. Beam search (``num_beams`` >
1) runs :func:`backend.caption.beam.beam_search`, transformers' selection rule over the same
model forward and cache API, with the prefix run once for all beams instead of once per beam
(see that module). Each step runs the beams as one batched forward; what made 3 beams cost ~1.8x
one row was the GEMM kernel CPU BLAS picks for a few rows against GPT-2's ``Conv1D`` weights,
see :func:`linear_layout`.

Scores are length-normalised log-probabilities: ``sum(log p) / n_tokens ** length_penalty``
over the generated tokens, EOS included. Beam search reports its own beam scores (computed after
the repetition controls); greedy and nucleus scores are recomputed from the model's raw logits.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from backend.api import Caption
from backend.caption.beam import beam_search
from backend.caption.config import DecodeConfig, DecodeStrategy
from backend.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from backend.caption.model import ClipCapModel


# transformers warns that n-gram and repetition controls skip the prompt when it is given as
# embeddings: exactly what a ClipCap prefix (which has no tokens) needs. A filter for that one
# message, set once, rather than ``catch_warnings`` around every call (not thread-safe).
warnings.filterwarnings(
    "ignore", message=r"Passing `(no_repeat_ngram_size|repetition_penalty)` with `inputs_embeds`", category=UserWarning
)


def _generate_kwargs(config: DecodeConfig, eos_id: int, pad_id: int) -> dict:
    kw: dict = dict(
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        repetition_penalty=config.repetition_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        length_penalty=config.length_penalty,
        use_cache=True,
        return_dict_in_generate=True,
    )
    if config.strategy is not DecodeStrategy.NUCLEUS:  # greedy, or a beam of one (wider beams: beam.py)
        kw.update(do_sample=False, num_beams=1, output_logits=True)
    else:
        kw.update(do_sample=True, num_beams=1, num_return_sequences=config.n_best, top_p=config.top_p,
                  top_k=0, temperature=config.temperature, output_logits=True)
    return kw


def linear_layout(decoder: torch.nn.Module) -> int:
    """Store the decoder's ``Conv1D`` weights (GPT-2 family) the way ``nn.Linear`` stores its own.

    GPT-2's ``Conv1D`` keeps its weight as an (in, out) matrix, row-major, and multiplies
    ``x @ W``. For 2-3 rows (the beams of one region) the CPU GEMM kernel torch picks then costs
    nearly one pass over the weights per row (2 threads, the 340 MB of GPT-2 small's blocks per
    step: 12 ms for 1 row, 22 ms for 3); with the same matrix laid out (out, in) in memory, as
    ``nn.Linear`` (BioGPT, ...) and GPT-2's own LM head already are, 3 rows cost what 1 does
    (13 ms). From 4 to 10 rows the (out, in) layout is 10-30 % slower, from 30 on the same. Values,
    shapes and gradients are unchanged (only the strides), so training, ``state_dict`` and
    ``save_pretrained`` see the same tensors; the copy is made once per model.

    Returns
    -------
    int
        The number of weights re-laid out (0 when there were none or it was already done).
    """
    from transformers.pytorch_utils import Conv1D

    changed = 0
    # outside inference mode: the new storage must stay usable by autograd if the model trains on
    with torch.inference_mode(False), torch.no_grad():
        for module in decoder.modules():
            w = module.weight if isinstance(module, Conv1D) else None
            if w is None or w.dim() != 2 or w.stride() == (1, w.shape[0]):
                continue
            w.data = w.data.t().contiguous().t()
            changed += 1
    return changed


def _lengths(sequences: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens per row up to and including the first EOS (all of them if none)."""
    is_eos = sequences == eos_id
    return torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, sequences.shape[1])


@torch.inference_mode()
def decode_prefixes(
    model: ClipCapModel,
    tokenizer: PreTrainedTokenizerBase,
    clip_embeddings: torch.Tensor,
    config: DecodeConfig | None = None,
) -> list[Caption]:
    """Caption each row of (B, D) CLIP embeddings; one :class:`~backend.api.Caption` per row.

    Parameters
    ----------
    model
        The ClipCap model (mapper + decoder).
    tokenizer
        The decoder's tokenizer (needs an EOS token).
    clip_embeddings
        (B, D) image embeddings from the CLIP model the captioner was trained with.
    config
        Decoding settings; default: beam search, 3 beams, best caption only, 30 tokens.

    Returns
    -------
    list of Caption
        ``texts`` and ``scores`` n-best, best first.
    """
    config = config or DecodeConfig()
    eos_id = int(tokenizer.eos_token_id)
    pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id
    kwargs = _generate_kwargs(config, eos_id, pad_id)
    linear_layout(model.decoder)
    was_training = model.training
    model.eval()
    try:
        out: list[Caption] = []
        for start in range(0, clip_embeddings.shape[0], config.batch_size):
            chunk = clip_embeddings[start : start + config.batch_size]
            out.extend(_decode_chunk(model, tokenizer, chunk, config, kwargs, eos_id))
        return out
    finally:
        model.train(was_training)


def _causal_lm(model: ClipCapModel) -> Any:
    """The model's decoder: it must be a generating (causal) LM."""
    from transformers import GenerationMixin

    decoder = model.decoder
    if not isinstance(decoder, GenerationMixin):
        raise ModelError(f"captioner decoder {type(decoder).__name__}: cannot generate text "
                         "(not a transformers causal LM with GenerationMixin)")
    return decoder


def _generate(model: ClipCapModel, **kwargs: Any) -> Any:
    """``model.decoder.generate(**kwargs)``: greedy and nucleus decoding."""
    return _causal_lm(model).generate(**kwargs)


def _is_beam(config: DecodeConfig) -> bool:
    return config.strategy is DecodeStrategy.BEAM and config.num_beams > 1


def _decode_chunk(
    model: ClipCapModel,
    tokenizer: PreTrainedTokenizerBase,
    clip_embeddings: torch.Tensor,
    config: DecodeConfig,
    kwargs: dict,
    eos_id: int,
) -> list[Caption]:
    prefix = model.prefix(clip_embeddings)
    b, k = prefix.shape[:2]
    if _is_beam(config):
        seqs, scores = beam_search(_causal_lm(model), prefix, config, eos_id, int(kwargs["pad_token_id"]))
        return _captions(tokenizer, seqs, _lengths(seqs, eos_id), scores, b)
    mask = torch.ones(b, k, dtype=torch.long, device=prefix.device)
    if config.strategy is DecodeStrategy.NUCLEUS and config.seed is not None:
        devices = [prefix.device] if prefix.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            result = _generate(model, inputs_embeds=prefix, attention_mask=mask, **kwargs)
    else:
        result = _generate(model, inputs_embeds=prefix, attention_mask=mask, **kwargs)
    # with only inputs_embeds as prompt, sequences hold the generated tokens alone
    seqs = result.sequences
    lengths = _lengths(seqs, eos_id)
    logits = torch.stack(result.logits, dim=1).float()  # (rows, steps, vocab), raw model logits
    logp = logits.log_softmax(-1).gather(-1, seqs[:, : logits.shape[1], None]).squeeze(-1)
    keep = torch.arange(logp.shape[1], device=logp.device)[None, :] < lengths[:, None]
    scores = (logp * keep).sum(1) / lengths.float() ** config.length_penalty
    return _captions(tokenizer, seqs, lengths, scores, b)


def _captions(
    tokenizer: PreTrainedTokenizerBase, seqs: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor, b: int
) -> list[Caption]:
    """One Caption per region from (b * n, T) token rows, each cut to its length (``_lengths``:
    through the first EOS), and their scores."""
    n = seqs.shape[0] // b
    rows = [row[: int(length)].tolist() for row, length in zip(seqs, lengths)]
    texts = [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    captions = []
    for i in range(b):
        rows = sorted(range(i * n, (i + 1) * n), key=lambda r: -float(scores[r]))
        captions.append(Caption(texts=tuple(texts[r] for r in rows), scores=tuple(float(scores[r]) for r in rows)))
    return captions
