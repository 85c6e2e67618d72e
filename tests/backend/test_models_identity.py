"""Model identity: caches and cohort indexes are keyed by the weights a model was read from
(the hub snapshot's commit), not by the name it was asked for. Hand-made hub caches, offline."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.embed import EmbeddingCache, EmbedStage, embed_slide
from backend.embed.cache import CacheKey
from backend.errors import ModelMismatchError, UnknownModelError, WeightsNotFoundError
from backend.index import CohortIndex
from backend.models import load_model, resolve_model
from backend.models.identity import describe, is_legacy, legacy_ids
from backend.models.loading import TEST_TINY_CONFIG, build_open_clip_module
from backend.slides import TileSpec
from tests.support import hub_helpers

QUILT_REPO = "wisdomik/QuiltNet-B-32"
REV_A = "a" * 8 + "0123456789abcdef0123456789abcdef"
REV_B = "b" * 8 + "0123456789abcdef0123456789abcdef"
SPEC = TileSpec(tile_size=64, mpp=4.0)  # a handful of tiles on CMU: this is about keys, not pixels


def write_snapshot(hub: Path, rev: str, seed: int) -> Path:
    """A QuiltNet-named repo with tiny weights at ``rev``; refs/main now points at it."""
    import json

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_open_clip_module(TEST_TINY_CONFIG)
    config = {"model_cfg": TEST_TINY_CONFIG, "preprocess_cfg": {}}
    snapshot = hub_helpers.make_hub_repo(hub, QUILT_REPO, {"open_clip_config.json": json.dumps(config).encode()}, rev)
    torch.save(module.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    return snapshot


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_snapshot(hub, REV_A, seed=1)
    return hub


def _embed(slide: Path, model, cache: EmbeddingCache):
    stages: list[EmbedStage] = []
    emb = embed_slide(slide, model, SPEC, cache=cache, batch_size=16, progress=lambda p: stages.append(p.stage.split()[0]))  # 'cached NAME'
    return emb, stages


def test_two_names_of_one_snapshot_share_one_cache_and_one_index(hub: Path, cmu_slide: Path, tmp_path: Path) -> None:
    by_name = load_model("quiltnet-b32", device="cpu")
    by_hub_id = load_model(f"hf-hub:{QUILT_REPO}", device="cpu")
    assert by_name.model_id == by_hub_id.model_id == f"hf-hub:{QUILT_REPO}@{REV_A}"

    cache = EmbeddingCache(tmp_path / "cache")
    first, _ = _embed(cmu_slide, by_name, cache)
    second, stages = _embed(cmu_slide, by_hub_id, cache)
    assert stages == [EmbedStage.CACHED] and len(list(cache.entries())) == 1
    np.testing.assert_array_equal(first.vectors, second.vectors)

    with CohortIndex.open_or_create(tmp_path / "index", model_id=by_name.model_id, dim=by_name.embed_dim) as index:
        index.add(first)
    with CohortIndex.open_or_create(tmp_path / "index", model_id=by_hub_id.model_id, dim=by_hub_id.embed_dim) as index:
        query = by_hub_id.encode_text(["tumor"])[0].numpy()
        assert index.search(query, 3, model_id=by_hub_id.model_id)  # a hit on the one slide


def test_new_weights_upstream_get_a_new_key_and_the_old_index_refuses_them(
    hub: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    old = load_model("quiltnet-b32", device="cpu")
    cache = EmbeddingCache(tmp_path / "cache")
    old_emb, _ = _embed(cmu_slide, old, cache)
    with CohortIndex.open_or_create(tmp_path / "index", model_id=old.model_id, dim=old.embed_dim) as index:
        index.add(old_emb)

    write_snapshot(hub, REV_B, seed=2)  # refs/main moved to other weights
    new = load_model("quiltnet-b32", device="cpu")
    assert new.model_id == f"hf-hub:{QUILT_REPO}@{REV_B}" != old.model_id

    new_emb, stages = _embed(cmu_slide, new, cache)  # a miss: the old vectors are not reused
    assert EmbedStage.CACHED not in stages and len(list(cache.entries())) == 2
    assert not np.allclose(new_emb.vectors, old_emb.vectors)

    with pytest.raises(ModelMismatchError) as err:
        CohortIndex.open_or_create(tmp_path / "index", model_id=new.model_id, dim=new.embed_dim)
    message = str(err.value)
    assert old.model_id in message and new.model_id in message and "other weights" in message
    assert f"model {old.model_id}" in message  # how to load the weights the index was built with

    with CohortIndex.open(tmp_path / "index", read_only=True) as index:
        with pytest.raises(ModelMismatchError) as err:
            index.search(new.encode_text(["tumor"])[0].numpy(), 3, model_id=new.model_id)
    assert old.model_id in str(err.value) and new.model_id in str(err.value)

    # The recorded id is a model name: it reads the very snapshot the index was built with.
    pinned = load_model(old.model_id, device="cpu")
    assert pinned.model_id == old.model_id
    torch.testing.assert_close(pinned.encode_text(["tumor"]), old.encode_text(["tumor"]), atol=0, rtol=0)
    with CohortIndex.open_or_create(tmp_path / "index", model_id=pinned.model_id, dim=pinned.embed_dim) as index:
        assert index.model_id == old.model_id


def test_an_index_from_before_weights_identities_is_refused_with_how_to_rebuild(hub: Path, tmp_path: Path) -> None:
    CohortIndex.create(tmp_path / "legacy", model_id="quiltnet-b32", dim=32).close()
    model = load_model("quiltnet-b32", device="cpu")
    with pytest.raises(ModelMismatchError) as err:
        CohortIndex.open_or_create(tmp_path / "legacy", model_id=model.model_id, dim=model.embed_dim)
    message = str(err.value)
    assert "'quiltnet-b32'" in message and model.model_id in message
    assert "older napari-histoclip" in message and "another --out" in message


def test_a_legacy_cache_store_is_not_used_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from test_embed_cache_safety import _finished_store

    cache = EmbeddingCache(tmp_path / "cache")
    legacy = _finished_store(cache, CacheKey("fp0123", "quiltnet-b32", "spec-a"))
    with caplog.at_level(logging.WARNING):
        assert cache.load(CacheKey("fp0123", f"hf-hub:{QUILT_REPO}@{REV_A}", "spec-a")) is None
    assert str(legacy) in caplog.text and "Delete it" in caplog.text
    assert legacy.is_dir()


def test_names_with_a_revision() -> None:
    entry = resolve_model(f"quiltnet-b32@{REV_A}")
    assert (entry.name, entry.source, entry.revision) == ("quiltnet-b32", QUILT_REPO, REV_A)
    assert resolve_model(f"hf-hub:{QUILT_REPO}@main").revision == "main"
    assert resolve_model("hf-hub:org/other@v1.0").source == "org/other"
    assert resolve_model("quiltnet-b32").revision is None
    assert legacy_ids(f"hf-hub:{QUILT_REPO}@{REV_A}") == ("quiltnet-b32",)
    assert legacy_ids(f"hf-hub:org/other@{REV_A}") == ("hf-hub:org/other",)
    assert is_legacy("quiltnet-b32") and is_legacy("hf-hub:org/other") and not is_legacy("test-tiny")
    assert not is_legacy(f"hf-hub:org/other@{REV_A}") and not is_legacy("bundle:x@0123456789ab")
    assert describe(f"hf-hub:{QUILT_REPO}@{REV_A}").startswith(f"quiltnet-b32 at hub commit {REV_A[:12]}")
    with pytest.raises(UnknownModelError, match="weights identity of a model bundle"):
        resolve_model("bundle:tiny-ft@0123456789ab")


def test_a_bundle_folder_with_an_at_sign_is_still_a_bundle(tmp_path: Path) -> None:
    from backend.models import save_bundle

    path = save_bundle(load_model("test-tiny", device="cpu"), tmp_path / "quiltnet-b32@v2")
    assert resolve_model(str(path)).source == str(path.resolve())


def test_a_pinned_revision_missing_from_the_cache_names_it(hub: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=f"at revision {REV_B}"):
        load_model(f"quiltnet-b32@{REV_B}", device="cpu")


def test_ray_workers_with_different_weights_are_refused() -> None:
    """Workers on machines whose hub caches hold other snapshots load other weights under one
    name: their vectors must not go into one index."""
    from types import SimpleNamespace

    from backend.distributed import _wait_for_workers

    described = [(f"hf-hub:{QUILT_REPO}@{REV_A}", 32, 11, ""), (f"hf-hub:{QUILT_REPO}@{REV_B}", 32, 12, "")]
    ray = SimpleNamespace(wait=lambda refs, **kw: (refs, []), get=lambda refs: described,
                          exceptions=SimpleNamespace(RayError=RuntimeError))
    actors = [SimpleNamespace(describe=SimpleNamespace(remote=lambda: object())) for _ in described]
    with pytest.raises(ModelMismatchError, match=f"on Ray worker 1 is .*@{REV_B}.*the same model name with other "
                       f"weights.*same weights.*model hf-hub:{QUILT_REPO}@{REV_A}"):
        _wait_for_workers(ray, actors, "quiltnet-b32", None)
    described[1] = described[0][:2] + (12, "")
    assert _wait_for_workers(ray, actors, "quiltnet-b32", None)[0] == described[0][0]
