"""Decoding: greedy, beam n-best with scores, nucleus sampling, length and repetition controls,
batching, KV cache; the Captioner's input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.caption import Captioner, ClipCapModel, DecodeConfig, DecodeStrategy, MapperConfig, decode_prefixes
from backend.errors import InputError, ModelMismatchError
from tests.support.decoders import tiny_gpt2, word_tokenizer

# pytest resets warning filters per test; decode.py's own filter for this message applies outside tests
pytestmark = pytest.mark.filterwarnings("ignore:Passing `.*` with `inputs_embeds`:UserWarning")

WORDS = "h&e stained colorectal tissue with glands blank background slide area red pen marker on glass"


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    # one token per word: the text of a caption is its token sequence
    tok = word_tokenizer([WORDS])
    torch.manual_seed(0)
    model = ClipCapModel(MapperConfig(clip_dim=16, decoder_dim=64, prefix_length=3),
                         tiny_gpt2(tok, n_layer=2, n_embd=64))
    return Captioner(model.eval(), tok, "test-tiny")


@pytest.fixture(scope="module")
def emb() -> torch.Tensor:
    return torch.randn(3, 16, generator=torch.Generator().manual_seed(1))


def _log_prob(captioner: Captioner, emb: torch.Tensor, text: str, eos: bool) -> tuple[float, int]:
    """Sum of token log-probs of ``text`` (+ EOS) after the prefix of ``emb``, by a plain forward pass."""
    tok, model = captioner.tokenizer, captioner.model
    ids = tok(text, add_special_tokens=False).input_ids + ([tok.eos_token_id] if eos else [])
    seq = torch.tensor([ids])
    with torch.no_grad():
        prefix = model.prefix(emb[None])
        logits = model.decoder(inputs_embeds=torch.cat([prefix, model.decoder.get_input_embeddings()(seq)], 1)).logits
    k = prefix.shape[1]
    logp = logits[0, k - 1 : -1].log_softmax(-1).gather(-1, seq[0, :, None])
    return float(logp.sum()), len(ids)


def _ended(captioner, emb, text, max_tokens) -> bool:
    return len(text.split()) < max_tokens  # stopped before the limit: it generated EOS


def test_beam_search_gives_sorted_n_best_with_length_normalised_log_probs(captioner, emb):
    config = DecodeConfig(strategy="beam", num_beams=4, n_best=3, max_new_tokens=8)
    caps = captioner.caption(emb, config=config)
    assert len(caps) == 3
    for row, cap in zip(emb, caps):
        assert len(cap.texts) == 3 and len(cap.scores) == 3
        assert list(cap.scores) == sorted(cap.scores, reverse=True)
        for text, score in zip(cap.texts, cap.scores):
            total, n = _log_prob(captioner, row, text, eos=_ended(captioner, row, text, 8))
            assert score == pytest.approx(total / n, abs=1e-4)


def test_greedy_is_a_beam_of_one_and_scores_the_same_way(captioner, emb):
    greedy = captioner.caption(emb, config=DecodeConfig(strategy="greedy", max_new_tokens=6))
    beam1 = captioner.caption(emb, config=DecodeConfig(strategy="beam", num_beams=1, max_new_tokens=6))
    assert greedy == beam1
    for row, cap in zip(emb, greedy):
        total, n = _log_prob(captioner, row, cap.texts[0], eos=_ended(captioner, row, cap.texts[0], 6))
        assert cap.scores[0] == pytest.approx(total / n, abs=1e-4)
    # a wide beam finds a caption at least as likely as greedy's (same normalisation)
    beam = captioner.caption(emb, config=DecodeConfig(num_beams=5, max_new_tokens=6))
    assert all(b.scores[0] >= g.scores[0] - 1e-5 for b, g in zip(beam, greedy))


def test_length_controls(captioner, emb):
    fixed = captioner.caption(emb, config=DecodeConfig(max_new_tokens=7, min_new_tokens=7))
    assert all(len(c.texts[0].split()) == 7 for c in fixed)  # EOS blocked until 7 tokens
    raw = captioner.caption(emb, config=DecodeConfig(strategy="greedy", max_new_tokens=5, min_new_tokens=5,
                                                     length_penalty=0.0))
    for row, cap in zip(emb, raw):  # length_penalty 0: scores are plain sums
        total, _ = _log_prob(captioner, row, cap.texts[0], eos=False)
        assert cap.scores[0] == pytest.approx(total, abs=1e-4)


def test_repetition_controls(captioner, emb):
    config = dict(max_new_tokens=12, min_new_tokens=12)
    plain = captioner.caption(emb, config=DecodeConfig(strategy="greedy", **config))
    assert any(len(set(c.texts[0].split())) < 12 for c in plain)  # an untrained decoder repeats itself
    for cap in captioner.caption(emb, config=DecodeConfig(num_beams=3, n_best=3, no_repeat_ngram_size=2, **config)):
        for text in cap.texts:
            words = text.split()
            bigrams = list(zip(words, words[1:]))
            assert len(bigrams) == len(set(bigrams))
    for cap in captioner.caption(emb, config=DecodeConfig(strategy="greedy", repetition_penalty=1e4, **config)):
        words = cap.texts[0].split()
        assert len(words) == len(set(words))


def test_nucleus_sampling(captioner, emb):
    config = DecodeConfig(strategy="nucleus", n_best=4, top_p=0.95, seed=3, max_new_tokens=6)
    a = captioner.caption(emb, config=config)
    assert a == captioner.caption(emb, config=config)  # seeded: reproducible
    assert all(len(c.texts) == 4 and list(c.scores) == sorted(c.scores, reverse=True) for c in a)
    assert len({t for c in a for t in c.texts}) > 3  # samples differ
    # a nucleus holding only the top token is greedy decoding
    tiny_p = captioner.caption(emb, config=DecodeConfig(strategy="nucleus", top_p=1e-6, seed=0, max_new_tokens=6))
    greedy = captioner.caption(emb, config=DecodeConfig(strategy="greedy", max_new_tokens=6))
    assert [c.texts for c in tiny_p] == [c.texts for c in greedy]


def test_batched_decoding_equals_one_by_one(captioner, emb):
    config = DecodeConfig(num_beams=3, n_best=2, max_new_tokens=8, batch_size=2)
    together = captioner.caption(emb, config=config)
    alone = [captioner.caption(row, config=config)[0] for row in emb]
    for t, a in zip(together, alone):
        assert t.texts == a.texts
        np.testing.assert_allclose(t.scores, a.scores, atol=1e-4)


def test_decoding_uses_the_kv_cache(captioner, emb, monkeypatch):
    decoder = captioner.model.decoder
    seen: list[int] = []
    forward = decoder.forward

    def spy(*args, **kwargs):
        x = kwargs.get("inputs_embeds")
        seen.append(x.shape[1] if x is not None else kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", spy)
    decode_prefixes(captioner.model, captioner.tokenizer, emb[:1], DecodeConfig(max_new_tokens=5, min_new_tokens=5))
    assert seen[0] == 3 and set(seen[1:]) == {1}  # prefix once, then one new token per step


@pytest.mark.parametrize("strategy", ["greedy", "nucleus", "beam"])
def test_every_strategy_runs_the_lm_head_on_the_last_position_only(captioner, emb, monkeypatch, strategy):
    head = captioner.model.decoder.get_output_embeddings()
    positions: list[int] = []
    hook = head.register_forward_hook(lambda m, i, out: positions.append(out.shape[1]))
    try:
        decode_prefixes(captioner.model, captioner.tokenizer, emb[:1],
                        DecodeConfig(strategy=strategy, max_new_tokens=4, min_new_tokens=4))
    finally:
        hook.remove()
    assert positions == [1] * 4  # not the prefix's 3 positions at the first step


def test_captioner_checks_its_inputs(captioner, emb):
    with pytest.raises(ModelMismatchError, match="the captioner was made with model 'test-tiny', but the model of the "
                       "embeddings given is 'quiltnet-b32'"):
        captioner.caption(emb, model_id="quiltnet-b32")
    assert len(captioner.caption(emb.numpy(), model_id="test-tiny")) == 3
    with pytest.raises(InputError, match=r"expected shape \(B, 16\).*got \(3, 8\)"):
        captioner.caption(torch.randn(3, 8))
    bad = emb.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        captioner.caption(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strategy="topk"), "decode strategy: 'topk' is not one of"),
        (dict(strategy="greedy", n_best=2), "greedy decoding gives one caption"),
        (dict(num_beams=2, n_best=3), "n_best: 3 exceeds num_beams=2"),
        (dict(max_new_tokens=5, min_new_tokens=6), "min_new_tokens"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_decode_config_rejects_bad_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        DecodeConfig(**kwargs)
    assert DecodeConfig(strategy="nucleus").strategy is DecodeStrategy.NUCLEUS


def test_decoding_lays_gpt2_weights_out_as_linear_once_and_keeps_them_trainable(tmp_path):
    from transformers.pytorch_utils import Conv1D

    from backend.caption.decode import linear_layout

    tok = word_tokenizer([WORDS])
    torch.manual_seed(0)
    model = ClipCapModel(MapperConfig(clip_dim=16, decoder_dim=64, prefix_length=3), tiny_gpt2(tok, n_layer=2, n_embd=64))
    model.eval()  # no dropout: the losses before and after compare exactly
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([tok("stained tissue with glands", add_special_tokens=False).input_ids] * 2)
    mask = torch.ones_like(ids)
    before = {n: p.detach().clone() for n, p in model.decoder.named_parameters()}
    with torch.no_grad():
        loss_before = float(model(x, ids, mask).loss)
    convs = [m for m in model.decoder.modules() if isinstance(m, Conv1D)]
    assert convs and all(m.weight.is_contiguous() for m in convs)  # GPT-2's own (in, out) layout

    caps = decode_prefixes(model, tok, x, DecodeConfig(max_new_tokens=5))
    # (out, in) in memory, as nn.Linear keeps it; same shapes and values
    assert all(m.weight.stride() == (1, m.weight.shape[0]) for m in convs)
    for name, p in model.decoder.named_parameters():
        assert p.shape == before[name].shape and torch.equal(p, before[name]), name
    assert linear_layout(model.decoder) == 0  # done once
    assert decode_prefixes(model, tok, x, DecodeConfig(max_new_tokens=5)) == caps

    # training goes on as before: same loss, gradients of the weights' shape, a step changes them
    out = model(x, ids, mask)
    assert float(out.loss) == pytest.approx(loss_before, abs=1e-5)
    out.loss.backward()
    assert all(m.weight.grad is not None and m.weight.grad.shape == m.weight.shape for m in convs)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(convs[0].weight, before["transformer.h.0.attn.c_attn.weight"])
    # and save_pretrained writes (contiguous safetensors) what loads back equal
    model.decoder.save_pretrained(tmp_path / "decoder")
    again = type(model.decoder).from_pretrained(tmp_path / "decoder")
    for (name, p), (_, q) in zip(model.decoder.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name
