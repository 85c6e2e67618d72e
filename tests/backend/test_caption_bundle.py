"""Captioner bundles: round trips (decoder weights or hub reference), model id checks, bad bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.caption import (
    Captioner,
    ClipCapModel,
    DecodeConfig,
    MapperConfig,
    is_captioner_bundle,
    load_captioner,
    save_captioner,
)
from backend.errors import InputError, ModelError, ModelMismatchError, UnknownModelError
from tests.support.decoders import tiny_gpt2, train_bpe_tokenizer

CONFIG = DecodeConfig(num_beams=3, n_best=2, max_new_tokens=6)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(["blank background slide area", "red pen marker on glass"] * 3, vocab_size=280)


@pytest.fixture(scope="module")
def mlp_captioner(tokenizer) -> Captioner:
    torch.manual_seed(0)
    model = ClipCapModel(MapperConfig(kind="mlp", clip_dim=16, decoder_dim=64, prefix_length=3),
                         tiny_gpt2(tokenizer, n_layer=1, n_embd=64))
    return Captioner(model.eval(), tokenizer, "test-tiny")


def _same_captions(a: Captioner, b: Captioner) -> None:
    emb = torch.randn(2, a.embed_dim, generator=torch.Generator().manual_seed(0))
    ca, cb = a.caption(emb, config=CONFIG), b.caption(emb, config=CONFIG)
    assert [c.texts for c in ca] == [c.texts for c in cb]
    for x, y in zip(ca, cb):
        assert x.scores == pytest.approx(y.scores, abs=1e-5)


def test_round_trip_with_decoder_weights(tmp_path, mlp_captioner):
    path = save_captioner(mlp_captioner, tmp_path / "cap", metadata={"note": "test"})
    manifest = json.loads((path / "histoclip.json").read_text())
    assert manifest["kind"] == "clipcap" and manifest["format_version"] == 1
    assert manifest["clip_model_id"] == "test-tiny"
    assert manifest["decoder"] == {"source": "bundle", "path": "decoder"}
    assert manifest["mapper"]["kind"] == "mlp" and manifest["metadata"] == {"note": "test"}
    assert (path / "mapper.safetensors").is_file() and (path / "decoder" / "model.safetensors").is_file()
    assert is_captioner_bundle(path)

    loaded = load_captioner(path, clip_model_id="test-tiny", device="cpu")
    assert loaded.clip_model_id == "test-tiny" and not loaded.model.decoder_frozen
    _same_captions(mlp_captioner, loaded)

    # saving again replaces the bundle in place, leaving no temporary directories behind
    save_captioner(loaded, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]


def test_frozen_hub_decoder_is_stored_by_name(tmp_path, tokenizer, monkeypatch):
    """A hand-made hub cache stands in for the hub (HF_HUB_OFFLINE=1): the bundle holds the
    decoder's name only, and loading resolves it through the cache."""
    hub = tmp_path / "hub"
    snapshot = hub / "models--tiny-org--tiny-gpt2" / "snapshots" / ("0" * 40)
    decoder = tiny_gpt2(tokenizer, n_layer=1, n_embd=64, seed=5)
    decoder.save_pretrained(snapshot)
    (hub / "models--tiny-org--tiny-gpt2" / "refs").mkdir()
    (hub / "models--tiny-org--tiny-gpt2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))

    from backend.caption import load_decoder

    model = ClipCapModel(MapperConfig(kind="transformer", clip_dim=16, decoder_dim=64, prefix_length=3,
                                      num_layers=1, num_heads=2), load_decoder("tiny-org/tiny-gpt2"))
    captioner = Captioner(model.eval(), tokenizer, "quiltnet-b32", decoder_ref="tiny-org/tiny-gpt2")
    path = save_captioner(captioner, tmp_path / "cap")
    manifest = json.loads((path / "histoclip.json").read_text())
    assert manifest["decoder"] == {"source": "hub", "name": "tiny-org/tiny-gpt2", "revision": None}
    assert manifest["decoder_frozen"] is True
    assert not (path / "decoder").exists() and (path / "tokenizer").is_dir()

    loaded = load_captioner(path, device="cpu")
    assert loaded.decoder_ref == "tiny-org/tiny-gpt2" and loaded.model.decoder_frozen
    _same_captions(captioner, loaded)

    with pytest.raises(InputError, match="only a frozen decoder can be stored by name"):
        Captioner(ClipCapModel(MapperConfig(clip_dim=16, decoder_dim=64), decoder), tokenizer, "x",
                  decoder_ref="tiny-org/tiny-gpt2")


def test_loading_for_embeddings_of_another_model_names_both_ids(tmp_path, mlp_captioner):
    path = save_captioner(mlp_captioner, tmp_path / "cap")
    with pytest.raises(ModelMismatchError) as err:
        load_captioner(path, clip_model_id="hf-hub:wisdomik/QuiltNet-B-32")
    assert "'test-tiny'" in str(err.value) and "'hf-hub:wisdomik/QuiltNet-B-32'" in str(err.value)


def test_bad_bundles_give_clear_errors(tmp_path, mlp_captioner):
    with pytest.raises(UnknownModelError, match="no such directory"):
        load_captioner(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="histoclip.json"):
        load_captioner(tmp_path / "empty")

    path = save_captioner(mlp_captioner, tmp_path / "cap")
    manifest_path = path / "histoclip.json"
    good = json.loads(manifest_path.read_text())

    def write(**changes):
        manifest_path.write_text(json.dumps({**good, **changes}))

    write(kind="clip")
    with pytest.raises(ModelError, match="a 'clip' bundle, not a captioner"):
        load_captioner(path)
    write(format_version=99)
    with pytest.raises(ModelError, match="format_version 99 is not supported"):
        load_captioner(path)
    write(mapper={**good["mapper"], "prefix_length": 4})
    with pytest.raises(ModelError, match="mapper weights do not fit"):
        load_captioner(path)
    write()
    (path / "mapper.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        load_captioner(path)


def test_save_refuses_to_overwrite_other_files(tmp_path, mlp_captioner):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="notes is a folder that is not a histoclip bundle.*refusing to overwrite"):
        save_captioner(mlp_captioner, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["notes"]
