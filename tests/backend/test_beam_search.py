"""backend.caption.beam: the same n-best sequences and scores as transformers' beam search."""

from __future__ import annotations

import pytest
import torch

from backend.caption.beam import beam_search
from backend.caption.config import DecodeConfig
from backend.caption.decode import _lengths
from tests.support.decoders import tiny_gpt2, word_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:Passing `.*` with `inputs_embeds`:UserWarning")

WORDS = "h&e stained colorectal tissue with glands blank background slide area red pen marker on glass"
MAX = 8


@pytest.fixture(scope="module")
def lm_and_eos():
    tok = word_tokenizer([WORDS])
    lm = tiny_gpt2(tok, n_layer=2, n_embd=64, seed=0).eval()
    eos = int(tok.eos_token_id)
    with torch.no_grad():  # a larger EOS embedding (tied to the LM head): some captions end early, some do not
        lm.transformer.wte.weight[eos] *= 4.0
    return lm, eos


def _prefixes(seed: int, b: int = 5) -> torch.Tensor:
    return torch.randn(b, 3, 64, generator=torch.Generator().manual_seed(seed))


def _generate(lm, prefix: torch.Tensor, config: DecodeConfig, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = lm.generate(
        inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
        max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens, eos_token_id=eos,
        pad_token_id=eos, repetition_penalty=config.repetition_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size, length_penalty=config.length_penalty, use_cache=True,
        do_sample=False, num_beams=config.num_beams, num_return_sequences=config.n_best, output_scores=True,
        early_stopping=True, return_dict_in_generate=True,
    )
    return out.sequences, out.sequences_scores


def _rows(seqs: torch.Tensor, eos: int) -> list[list[int]]:
    return [row[: int(n)].tolist() for row, n in zip(seqs, _lengths(seqs, eos))]


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_beams=3, n_best=3),
        dict(num_beams=3, n_best=1, length_penalty=0.0),
        dict(num_beams=3, n_best=2, length_penalty=2.0),
        dict(num_beams=4, n_best=4, min_new_tokens=4),
        dict(num_beams=3, n_best=3, no_repeat_ngram_size=2),
        dict(num_beams=3, n_best=3, repetition_penalty=1.5),
    ],
)
def test_beam_search_gives_transformers_n_best_sequences_and_scores(lm_and_eos, settings):
    lm, eos = lm_and_eos
    config = DecodeConfig(max_new_tokens=MAX, **settings)
    lengths: list[int] = []
    for seed in (1, 2, 3):
        prefix = _prefixes(seed)
        with torch.inference_mode():
            want_seqs, want_scores = _generate(lm, prefix, config, eos)
        got_seqs, got_scores = beam_search(lm, prefix, config, eos, eos)
        assert got_seqs.shape[0] == want_seqs.shape[0] == prefix.shape[0] * config.n_best
        assert _rows(got_seqs, eos) == _rows(want_seqs, eos)
        torch.testing.assert_close(got_scores, want_scores, atol=1e-5, rtol=1e-5)
        lengths += _lengths(got_seqs, eos).tolist()
    # both kinds of hypotheses were compared: ended by EOS before the limit, and cut at the limit
    if config.min_new_tokens < MAX:
        assert min(lengths) < MAX
    assert max(lengths) == MAX


def test_beam_search_runs_the_prefix_once_and_reorders_the_cache_only_when_a_beam_changes_parent(
    lm_and_eos, monkeypatch
):
    from transformers.cache_utils import Cache

    lm, eos = lm_and_eos
    rows: list[int] = []
    forward = lm.forward

    def spy(*args, **kwargs):
        x = kwargs.get("inputs_embeds")
        rows.append((x if x is not None else kwargs["input_ids"]).shape[0])
        return forward(*args, **kwargs)

    reorders: list[list[int]] = []
    reorder = Cache.reorder_cache

    def spy_reorder(self, beam_idx):
        reorders.append(beam_idx.tolist())
        return reorder(self, beam_idx)

    monkeypatch.setattr(lm, "forward", spy)
    monkeypatch.setattr(Cache, "reorder_cache", spy_reorder)
    config = DecodeConfig(num_beams=3, max_new_tokens=MAX, min_new_tokens=MAX)
    beam_search(lm, _prefixes(4, b=2), config, eos, eos)
    assert rows == [2] + [6] * (MAX - 1)  # 2 regions' prefixes once, then 2 x 3 beams per step
    assert reorders and all(idx != list(range(6)) for idx in reorders)
