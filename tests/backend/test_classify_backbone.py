"""Backend.classify with a classifier that brings its own image-only backbone (a CLIP-IT student):
embedded once through the engine and cache under the backbone's model id, then read from it.

The backbone here is test-tiny's image tower saved as the classifier's ``backbone/``: the same
weights under another model id, so its map must equal the registry-sourced classifier's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import InputError, ModelError
from backend.models.classifier import Classifier, save_classifier

TILES = api.TileOptions(tile_size=64, mpp=2.0)
SPEC = {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}
NAMES = ("tumor", "stroma", "fat")
COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Classifiers over test-tiny: linear head from the registry, linear and late-fusion heads
    with their own backbone."""
    from backend.models import load_model
    from backend.models.heads import FusionHead, LinearHead

    tiny = load_model("test-tiny", device="cpu")
    rng = np.random.default_rng(0)
    linear = LinearHead(NAMES, COLORS, 20 * rng.normal(size=(3, 32)), rng.normal(size=3))
    layers = ((rng.normal(size=(8, 16)), rng.normal(size=8)), (rng.normal(size=(3, 8)), rng.normal(size=3)))
    fusion = FusionHead(NAMES, COLORS, linear.weight, linear.bias, rng.normal(size=(16, 32)), rng.normal(size=16),
                        layers, 0.4)
    folder = tmp_path_factory.mktemp("backbone-classifiers")
    out = {}
    for key, head, backbone in (("registry", linear, None), ("bundle", linear, tiny), ("fusion", fusion, tiny)):
        clf = Classifier(key, head, "test-tiny", str(tiny.model_id), SPEC)
        out[key] = str(save_classifier(clf, folder / key, backbone=backbone))
    return out


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Tiles read from slides so far (every batch the engine reads is counted)."""
    import backend.slides

    seen: list[int] = []
    real = backend.slides.read_tiles

    def counting(slide, grid, indices, *args, **kwargs):
        seen.append(len(indices))
        return real(slide, grid, indices, *args, **kwargs)

    monkeypatch.setattr(backend.slides, "read_tiles", counting)
    return seen


def test_own_backbone_embeds_once_then_classifies_from_the_cache(bundles, reads, cmu_slide: Path,
                                                                   tmp_path: Path) -> None:
    from backend.local import LocalBackend
    from backend.models.classifier import load_classifier
    from backend.tasks.refine import head_class_map

    slide = api.SlideRef(str(cmu_slide))
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu")
    own = backend.classify(api.ClassifyRequest(slide, bundles["bundle"]))
    assert sum(reads) == 34 and own.labels == NAMES  # CMU-1-Small-Region: 34 tissue tiles at 64 px, 2 µm/px
    again = backend.classify(api.ClassifyRequest(slide, bundles["bundle"]))
    assert sum(reads) == 34  # the second classify of the slide read no tile
    np.testing.assert_array_equal(again.class_map, own.class_map)

    # The registry-sourced twin embeds again (test-tiny's own model id) and gives the same map.
    registry = backend.classify(api.ClassifyRequest(slide, bundles["registry"]))
    assert sum(reads) == 68
    np.testing.assert_array_equal(registry.class_map, own.class_map)
    np.testing.assert_array_equal(registry.probabilities, own.probabilities)
    assert len(np.unique(own.class_map[own.class_map > 0])) > 1  # a map, not one class everywhere

    # Late fusion through the same path (another student: its backbone embeds the slide under its
    # own id), its map its own head's softmax over the cached backbone embeddings.
    fusion = backend.classify(api.ClassifyRequest(slide, bundles["fusion"]))
    clf = load_classifier(bundles["fusion"])
    emb = backend.embeddings(slide, clf.model, TILES)
    assert emb.model_id == clf.model_id and sum(reads) == 102
    np.testing.assert_array_equal(fusion.class_map, head_class_map(emb, clf.head).label_map)
    assert not np.array_equal(fusion.probabilities, own.probabilities, equal_nan=True)

    # A region: its tiles only, served from the cached slide; a new backend on the cache reads nothing.
    fresh = LocalBackend(cache_dir=tmp_path / "cache", device="cpu")
    box = api.Region.box(0, 0, 1200, 1200)
    part = fresh.classify(api.ClassifyRequest(slide, bundles["bundle"], region=box))
    inside = part.class_map > 0
    assert 0 < inside.sum() < (own.class_map > 0).sum() and sum(reads) == 102
    np.testing.assert_array_equal(part.class_map[inside], own.class_map[inside])


def test_own_backbone_refuses_text_and_late_fusion_refuses_refine(bundles, cmu_slide: Path, tmp_path: Path) -> None:
    from backend.local import LocalBackend
    from backend.models.classifier import load_classifier

    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu")
    slide = api.SlideRef(str(cmu_slide))
    backbone = load_classifier(bundles["bundle"]).model
    with pytest.raises(ModelError, match="embeds images only: zero-shot needs a vision-language model"):
        backend.zero_shot(api.ZeroShotRequest(slide, backbone, NAMES, tiles=TILES))
    with pytest.raises(InputError, match="late fusion.*refining starts from a linear head"):
        backend.refine(api.RefineRequest(slide, (), classifier=bundles["fusion"]))
    # A linear classifier with its own backbone refines (from the backbone's embeddings).
    r = backend.refine(api.RefineRequest(slide, (), classifier=bundles["bundle"]))
    assert r.labels == NAMES
