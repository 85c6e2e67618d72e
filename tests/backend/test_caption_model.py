"""ClipCap model: mappers, prefix-LM loss, decoders (GPT-2, BioGPT), loading errors."""

from __future__ import annotations

import pytest
import torch

from backend.caption import ClipCapModel, MapperConfig, MapperKind, build_mapper, load_decoder, load_tokenizer
from backend.errors import InputError, WeightsNotFoundError
from tests.support.decoders import tiny_gpt2, train_bpe_tokenizer

CAPTIONS = ["h&e stained colorectal tissue with glands", "blank background slide area", "red pen marker on glass"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS * 3, vocab_size=300)


@pytest.fixture(scope="module")
def decoder(tokenizer):
    return tiny_gpt2(tokenizer, n_layer=2, n_embd=64)


def _batch(tokenizer, texts):
    enc = tokenizer([t + tokenizer.eos_token for t in texts], padding=True, return_tensors="pt",
                    add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("kind", list(MapperKind))
def test_mapper_maps_embeddings_to_k_prefix_tokens(kind):
    config = MapperConfig(kind=kind, clip_dim=32, decoder_dim=64, prefix_length=5, num_layers=2, num_heads=4)
    mapper = build_mapper(config)
    out = mapper(torch.randn(3, 32))
    assert out.shape == (3, 5, 64)
    # L2-normalised inside: a rescaled embedding gives the same prefix
    x = torch.randn(2, 32)
    torch.testing.assert_close(mapper.eval()(x), mapper(7.0 * x))


def test_mapper_config_rejects_bad_values():
    with pytest.raises(InputError, match="mapper kind: 'lstm' is not one of"):
        MapperConfig(kind="lstm")
    with pytest.raises(InputError, match="num_heads: 5 does not divide the decoder width 64"):
        MapperConfig(kind="transformer", decoder_dim=64, num_heads=5)
    with pytest.raises(InputError, match="prefix_length"):
        MapperConfig(prefix_length=0)
    with pytest.raises(InputError, match="unknown fields"):
        MapperConfig.from_dict({"kind": "mlp", "size": 3})
    c = MapperConfig(kind="transformer", clip_dim=16, decoder_dim=64, num_heads=4)
    assert MapperConfig.from_dict(c.to_dict()) == c


def test_decoder_is_fine_tuned_with_mlp_and_frozen_with_transformer(decoder):
    mlp = ClipCapModel(MapperConfig(kind="mlp", clip_dim=32, decoder_dim=64, prefix_length=4), decoder)
    assert not mlp.decoder_frozen
    assert all(p.requires_grad for p in mlp.decoder.parameters())
    frozen = ClipCapModel(MapperConfig(kind="transformer", clip_dim=32, decoder_dim=64, prefix_length=4,
                                       num_layers=1, num_heads=2), tiny_gpt2(None, n_layer=1, n_embd=64))
    assert frozen.decoder_frozen
    assert not any(p.requires_grad for p in frozen.decoder.parameters())
    frozen.train()
    assert frozen.mapper.training and not frozen.decoder.training  # no dropout in a frozen decoder


def test_decoder_width_must_match(decoder):
    with pytest.raises(InputError, match="decoder_dim: 768 does not match the decoder's embedding width 64"):
        ClipCapModel(MapperConfig(clip_dim=32, decoder_dim=768), decoder)


def test_loss_is_over_caption_tokens_only(tokenizer, decoder):
    model = ClipCapModel(MapperConfig(clip_dim=32, decoder_dim=64, prefix_length=4), decoder).eval()
    emb = torch.randn(2, 32)
    ids, mask = _batch(tokenizer, CAPTIONS[:2])
    out = model(emb, ids, mask)
    assert out.n_tokens == int(mask.sum())

    # by hand: each caption alone, its tokens predicted from the prefix and the tokens before
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(2):
            n = int(mask[i].sum())
            seq = ids[i : i + 1, :n]
            prefix = model.prefix(emb[i : i + 1])
            logits = decoder(inputs_embeds=torch.cat([prefix, decoder.get_input_embeddings()(seq)], 1)).logits
            logp = logits[0, 3:-1].log_softmax(-1).gather(-1, seq[0, :, None])
            total += float(-logp.sum())
            count += n
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


def _fit(model, emb, ids, mask, steps, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(emb, ids, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_mlp_mapper_and_decoder_learn_captions(tokenizer):
    torch.manual_seed(0)
    model = ClipCapModel(MapperConfig(kind="mlp", clip_dim=8, decoder_dim=64, prefix_length=2),
                         tiny_gpt2(tokenizer, n_layer=1, n_embd=64))
    ids, mask = _batch(tokenizer, CAPTIONS)
    losses = _fit(model, torch.eye(8)[:3], ids, mask, steps=30, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_transformer_mapper_steers_a_frozen_pretrained_decoder(tokenizer):
    """The frozen-decoder kind needs a decoder that already speaks the language (as GPT-2 does):
    pretrain the tiny one on the captions, freeze it, and only the mapper learns which caption
    belongs to which embedding."""
    torch.manual_seed(0)
    lm = tiny_gpt2(tokenizer, n_layer=1, n_embd=64).train()
    ids, mask = _batch(tokenizer, CAPTIONS)
    # captions after 2 filler tokens: the positions they will have after a 2-token prefix
    filler = torch.full((3, 2), tokenizer.eos_token_id)
    lm_ids, lm_mask = torch.cat([filler, ids], 1), torch.cat([torch.ones_like(filler), mask], 1)
    labels = torch.cat([torch.full_like(filler, -100), ids.masked_fill(mask == 0, -100)], 1)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    for _ in range(25):
        loss = lm(input_ids=lm_ids, attention_mask=lm_mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    model = ClipCapModel(MapperConfig(kind="transformer", clip_dim=8, decoder_dim=64, prefix_length=2,
                                      num_layers=1, num_heads=2), lm)
    losses = _fit(model, torch.eye(8)[:3], ids, mask, steps=25)
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())  # decoder untouched


def test_biogpt_decoder_works_with_the_mapper(tokenizer):
    """BioGPT scales its token embeddings; prefix + get_input_embeddings() must agree with ids."""
    from transformers import BioGptConfig, BioGptForCausalLM

    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    biogpt = BioGptForCausalLM(config).eval()
    ids, mask = _batch(tokenizer, CAPTIONS[:1])
    with torch.no_grad():
        by_ids = biogpt(input_ids=ids).logits
        by_embeds = biogpt(inputs_embeds=biogpt.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(by_ids, by_embeds)

    from backend.caption import Captioner, DecodeConfig

    model = ClipCapModel(MapperConfig(kind="transformer", clip_dim=16, decoder_dim=64, prefix_length=3,
                                      num_layers=1, num_heads=2), biogpt)
    assert torch.isfinite(model(torch.randn(1, 16), ids, mask).loss)
    caps = Captioner(model, tokenizer, "test-tiny").caption(torch.randn(2, 16), config=DecodeConfig(max_new_tokens=5))
    assert len(caps) == 2 and all(len(c.texts) == 1 for c in caps)


def test_decoder_folder_and_missing_hub_model(tmp_path, tokenizer, decoder):
    decoder.save_pretrained(tmp_path / "dec")
    tokenizer.save_pretrained(tmp_path / "dec")
    loaded = load_decoder(tmp_path / "dec")
    assert loaded.config.n_embd == 64
    assert load_tokenizer(tmp_path / "dec").eos_token_id == tokenizer.eos_token_id
    # offline (conftest sets HF_HUB_OFFLINE=1): a clear error, at once, naming the way out
    with pytest.raises(WeightsNotFoundError,
                       match=r"decoder 'no-such-org/no-such-model'.*HF_HUB_OFFLINE.*local folder"):
        load_decoder("no-such-org/no-such-model", cache_dir=tmp_path / "hub")
    with pytest.raises(WeightsNotFoundError, match="tokenizer 'no-such-org/no-such-model'"):
        load_tokenizer("no-such-org/no-such-model", cache_dir=tmp_path / "hub")
