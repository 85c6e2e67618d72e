"""Weights identity, embedding caches and pinned revisions for the image-only families, as for
CLIP models: a timm encoder read from the hub cache is ``hf-hub:org/repo@<commit>``; a slide
embedded with it is a cache hit for the same commit and a miss after the repository moves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from backend.embed import EmbeddingCache, EmbedStage, embed_slide
from backend.models import load_model
from backend.models.identity import describe, mismatch_message, same_model_other_weights
from backend.slides import TileSpec
from tests.support.encoder_helpers import REV, save_timm_hub_repo, tiny_entry

SPEC = TileSpec(tile_size=224, mpp=2.0)  # a handful of tiles on CMU
REV2 = "fedcba0987654321fedcba0987654321fedcba09"


def _stages(events: list) -> set[str]:
    return {str(e.stage).split()[0] for e in events}


def test_timm_encoder_caches_by_hub_commit(tmp_path: Path, cmu_slide: Path) -> None:
    hub, cache = tmp_path / "hub", EmbeddingCache(tmp_path / "cache")
    entry = tiny_entry("uni")
    save_timm_hub_repo(hub, entry, seed=0, rev=REV)
    first = load_model(entry, device="cpu", cache_dir=hub)
    assert first.model_id == f"hf-hub:MahmoodLab/UNI@{REV}"
    emb = embed_slide(cmu_slide, first, SPEC, cache=cache, batch_size=4)
    assert emb.vectors.shape[1] == 48 and emb.n_tiles > 0
    events: list = []
    again = embed_slide(cmu_slide, load_model(entry, device="cpu", cache_dir=hub), SPEC, cache=cache, progress=events.append)
    assert _stages(events) == {EmbedStage.CACHED.value}
    np.testing.assert_array_equal(again.vectors, emb.vectors)

    # the repository moves to new weights: a new identity, so a new embedding (never mixed)
    save_timm_hub_repo(hub, entry, seed=1, rev=REV2)
    moved = load_model(entry, device="cpu", cache_dir=hub)
    assert moved.model_id == f"hf-hub:MahmoodLab/UNI@{REV2}"
    events = []
    new = embed_slide(cmu_slide, moved, SPEC, cache=cache, batch_size=4, progress=events.append)
    assert EmbedStage.CACHED.value not in _stages(events)
    assert not np.allclose(new.vectors, emb.vectors)
    # the old commit is still loadable by its revision, and still a cache hit
    pinned = load_model(dataclasses.replace(entry, revision=REV), device="cpu", cache_dir=hub)
    assert pinned.model_id == first.model_id
    events = []
    embed_slide(cmu_slide, pinned, SPEC, cache=cache, progress=events.append)
    assert _stages(events) == {EmbedStage.CACHED.value}
    # messages name the model by its registered name
    assert describe(first.model_id).startswith("uni at hub commit 1234567890ab")
    assert same_model_other_weights(first.model_id, moved.model_id)
    assert "other weights" in mismatch_message("the index", first.model_id, moved.model_id, "Rebuild it")


@pytest.mark.parametrize("model_id", ["timm:hf-hub:org/vit#cls+mean@" + REV, "hf-vision:org/dino#pooler@" + REV])
def test_unregistered_ids_keep_family_and_pooling(model_id: str) -> None:
    from backend.models import resolve_model

    entry = resolve_model(model_id)
    assert entry.revision == REV and entry.name == model_id.split("@")[0]
    assert describe(model_id).startswith(entry.name + " at hub commit")
