"""Zero-shot class maps, text heatmaps and exports over embeddings, with the tiny model.

These tests build ``SlideEmbeddings`` directly (tile vectors placed next to known class text
features), so they need no slide; ``test_embed_slide.py`` covers the path from a real slide.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from backend.atomic import leftover_temps
from backend.embed import SlideEmbeddings
from backend.errors import InputError, ModelMismatchError
from backend.tasks import DEFAULT_TEMPLATES, ClassPrompt, TextFeatureCache, text_heatmap, zero_shot
from backend.tasks.export import write_geojson, write_overlay_png, write_predictions_table
from backend.tasks.results import class_map_result
from backend.tasks.zero_shot import class_text_features, parse_classes

CLASSES = ("tumor", "stroma", "lymphocytes")


@pytest.fixture(scope="module")
def model():
    from backend.models import load_model

    return load_model("test-tiny", device="cpu")


def _embeddings(vectors: np.ndarray, model_id: str, grid_shape=(4, 5)) -> SlideEmbeddings:
    """Tiles on a (rows, cols) grid with stride 100 starting at (50, 20); cell (0, 0) empty."""
    n = len(vectors)
    cells = np.argwhere(np.ones(grid_shape, bool))[1 : n + 1]  # skip (0, 0): a background cell
    coords = np.stack([50 + cells[:, 1] * 100, 20 + cells[:, 0] * 100], axis=1)
    return SlideEmbeddings(
        slide_fingerprint="f" * 32,
        slide_name="synthetic.svs",
        slide_path="/nowhere/synthetic.svs",
        model_id=model_id,
        spec=None,
        spec_key="test",
        coords=coords,
        tile_extent=100.0,
        grid_index=cells,
        grid_shape=grid_shape,
        vectors=vectors,
        stride=100.0,
        origin=(50.0, 20.0),
        slide_dimensions=(600, 500),
    )


@pytest.fixture(scope="module")
def labelled(model):
    """Tiles whose vectors are the class text features plus a little noise: truth known."""
    cache = TextFeatureCache()
    text = class_text_features(model, parse_classes(CLASSES), DEFAULT_TEMPLATES, cache)
    rng = np.random.default_rng(0)
    truth = np.arange(12) % 3
    vec = text[truth] + 0.05 * rng.standard_normal((12, text.shape[1])).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return _embeddings(vec, model.model_id), truth, cache


def test_class_map_shapes_probabilities_and_geometry(model, labelled) -> None:
    emb, truth, cache = labelled
    cm = zero_shot(emb, CLASSES, model, text_cache=cache)
    assert cm.class_names == CLASSES and len(cm.colors) == 3
    assert cm.probabilities.shape == (12, 3) and cm.probabilities.dtype == np.float32
    np.testing.assert_allclose(cm.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(cm.labels, truth + 1)  # map values are 1 + class index
    assert cm.label_map.shape == (4, 5) and cm.label_map.dtype == np.int32
    assert cm.label_map[0, 0] == 0  # the cell without a tile is background
    r, c = emb.grid_index[3]
    assert cm.label_map[r, c] == truth[3] + 1
    assert cm.probability_maps.shape == (3, 4, 5) and np.isnan(cm.probability_maps[:, 0, 0]).all()
    np.testing.assert_allclose(cm.probability_maps[:, r, c], cm.probabilities[3])
    # One map pixel per grid step, centred on its tile (napari puts pixel centres at integers).
    assert cm.scale == (100.0, 100.0)
    assert cm.translate == (20 + 49.5, 50 + 49.5)
    assert cm.counts() == {"tumor": 4, "stroma": 4, "lymphocytes": 4}
    assert cm.unknown_value is None


def test_unknown_threshold_labels_uncertain_tiles(model, labelled) -> None:
    emb, _, cache = labelled
    plain = zero_shot(emb, CLASSES, model, text_cache=cache)
    top = plain.probabilities.max(axis=1)
    threshold = float(np.median(top))
    cm = zero_shot(emb, CLASSES, model, text_cache=cache, unknown_threshold=threshold)
    assert cm.unknown_value == 4
    np.testing.assert_array_equal(cm.labels == 4, top < threshold)
    assert set(cm.label_names()) <= {*CLASSES, "unknown"} and "unknown" in cm.label_names()
    with pytest.raises(InputError, match="unknown_threshold"):
        zero_shot(emb, CLASSES, model, text_cache=cache, unknown_threshold=1.5)


def test_templates_synonyms_and_text_feature_reuse(model, labelled) -> None:
    emb, _, _ = labelled
    cache = TextFeatureCache()
    zero_shot(emb, CLASSES, model, text_cache=cache)
    assert cache.encoded == len(CLASSES) * len(DEFAULT_TEMPLATES)
    zero_shot(emb, list(reversed(CLASSES)), model, text_cache=cache)  # relabel: no text encoded
    assert cache.encoded == len(CLASSES) * len(DEFAULT_TEMPLATES)
    # Synonyms and custom templates: every phrase x template is encoded once.
    cm = zero_shot(
        emb,
        {"tumor": ["carcinoma"], "stroma": [], "fat": ["adipose tissue"]},
        model,
        templates=["an image of {}", "{}"],
        text_cache=cache,
    )
    assert cm.class_names == ("tumor", "stroma", "fat") and cm.templates == ("an image of {}", "{}")
    cm2 = zero_shot(emb, [ClassPrompt("a", ("b",), (1, 2, 3)), "c"], model, synonyms=[["d"], []])
    assert cm2.colors[0] == (1, 2, 3)
    with pytest.raises(InputError, match=r"template 'no slot'"):
        zero_shot(emb, CLASSES, model, templates=["no slot"])
    with pytest.raises(InputError, match="at least 2 classes"):
        zero_shot(emb, ["tumor"], model)
    with pytest.raises(InputError, match="duplicate"):
        zero_shot(emb, ["tumor", "tumor"], model)


def test_class_vector_is_renormalised_template_mean(model) -> None:
    cache = TextFeatureCache()
    templates = ("a photo of {}.", "{}")
    got = class_text_features(model, parse_classes({"tumor": ["carcinoma"], "x": []}), templates, cache)
    prompts = [t.format(p) for p in ("tumor", "carcinoma") for t in templates]
    feats = model.encode_text(prompts).numpy()
    mean = feats.mean(axis=0)
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), atol=1e-5)


def test_embeddings_of_another_model_are_refused(model, labelled) -> None:
    emb, _, _ = labelled
    other = _embeddings(emb.vectors, "some-other-model")
    with pytest.raises(ModelMismatchError, match="some-other-model"):
        zero_shot(other, CLASSES, model)


def test_relabel_of_100k_tiles_is_fast(model) -> None:
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((100_000, model.embed_dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    emb = _embeddings(vec, model.model_id, grid_shape=(400, 251))
    names = [f"class {i}" for i in range(10)]
    cache = TextFeatureCache()
    zero_shot(emb, names, model, text_cache=cache)
    t0 = time.perf_counter()
    cm = zero_shot(emb, names, model, text_cache=cache)
    cm.label_map, cm.probability_maps  # noqa: B018 - the maps are part of a relabel
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"relabel of 100k tiles took {elapsed:.3f} s"  # loose bound: shared CI cores


def test_text_heatmap_shape_and_range(model, labelled) -> None:
    emb, truth, cache = labelled
    hm = text_heatmap(emb, "tumor", model, text_cache=cache)
    assert hm.similarity.shape == (12,) and hm.map.shape == (4, 5)
    assert np.isnan(hm.map[0, 0]) and np.nanmax(np.abs(hm.map)) <= 1.0
    np.testing.assert_allclose(hm.similarity, emb.vectors @ model.encode_text(["tumor"]).numpy()[0], atol=1e-5)
    with pytest.raises(InputError, match="empty"):
        text_heatmap(emb, "  ", model)


def test_exports_are_written_and_parse(model, labelled, tmp_path: Path) -> None:
    import pandas as pd
    from PIL import Image

    emb, truth, cache = labelled
    cm = class_map_result(zero_shot(emb, CLASSES, model, text_cache=cache, unknown_threshold=0.0), random_weights=True)

    gj = json.loads(write_geojson(cm, tmp_path / "tiles.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 12
    f = gj["features"][0]
    assert f["geometry"]["type"] == "Polygon"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and ring[0] == emb.coords[0].tolist()
    props = f["properties"]
    assert props["objectType"] == "tile"
    assert props["classification"]["name"] == CLASSES[truth[0]]
    assert len(props["classification"]["color"]) == 3
    assert set(props["measurements"]) == {f"p({c})" for c in CLASSES}
    assert sum(props["measurements"].values()) == pytest.approx(1.0, abs=1e-5)
    ann = json.loads(write_geojson(cm, tmp_path / "a.geojson", object_type="annotation").read_text())
    assert ann["features"][0]["properties"]["objectType"] == "annotation"
    with pytest.raises(InputError, match="object type 'cell'"):
        write_geojson(cm, tmp_path / "b.geojson", object_type="cell")

    csv = pd.read_csv(write_predictions_table(cm, tmp_path / "tiles.csv"))
    assert list(csv.columns[:8]) == ["x", "y", "w", "h", "row", "col", "class", "probability"]
    assert [c for c in csv.columns if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    assert list(csv["class"]) == [CLASSES[t] for t in truth]
    pq = pd.read_parquet(write_predictions_table(cm, tmp_path / "tiles.parquet"))
    pd.testing.assert_frame_equal(pq, csv, check_dtype=False)

    thumb = np.full((250, 300, 3), 230, np.uint8)  # the 600 x 500 slide at half size
    png = write_overlay_png(cm, tmp_path / "overlay.png", thumbnail=thumb, slide_dimensions=(600, 500))
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] == 250 and img.shape[1] > 300  # the legend is to the right
    # Tile 0 is at level-0 (150, 20) -> thumbnail (75, 10): tinted with its class colour.
    x, y = (emb.coords[0] + 50) // 2
    assert tuple(img[y, x]) != (230, 230, 230)
    assert tuple(img[5, 5]) == (230, 230, 230)  # grid cell (0, 0) has no tile: untouched
    assert not leftover_temps(tmp_path)  # no temp files left behind
