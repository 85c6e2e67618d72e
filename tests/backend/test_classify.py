"""Classifier bundles through the Backend: refine, save as classifier, classify, search a class.

Two generated slides of planted real textures: the second holds the first one's tiles with the
rows in reverse order, so a classifier trained on the first must label each copied tile as
refine labelled it there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import HistoclipError, InputError, ModelMismatchError
from backend.models.classifier import is_classifier_bundle, load_classifier
from tests.support.planted_textures import CLASSES, planted_tiles, write_tiles

pytestmark = pytest.mark.slow  # embeds two 225-tile slides with test-tiny once per module

TILES = api.TileOptions()


@pytest.fixture(scope="module")
def slides(testdata: Path, tmp_path_factory: pytest.TempPathFactory):
    """(backend, slide 1, slide 2, truth grid of slide 1)."""
    from backend.local import LocalBackend

    tiles, truth = planted_tiles(testdata)
    folder = tmp_path_factory.mktemp("classify")
    one = write_tiles(folder / "one.tif", tiles)
    two = write_tiles(folder / "two.tif", np.ascontiguousarray(tiles[::-1]))
    backend = LocalBackend(device="cpu")
    for path in (one, two):
        backend.embed_slide(api.SlideRef(str(path)), "test-tiny", TILES)
    return backend, api.SlideRef(str(one)), api.SlideRef(str(two)), truth


def marks(truth: np.ndarray, k: int = 5, seed: int = 0) -> tuple[api.TileMarks, ...]:
    rng = np.random.default_rng(seed)
    out = []
    for c, name in enumerate(CLASSES):
        cells = np.argwhere(truth == c)
        pick = cells[rng.choice(len(cells), k, replace=False)]
        out.append(api.TileMarks(name, tuple((int(r), int(col)) for r, col in pick)))
    return tuple(out)


def test_refine_through_the_backend(slides) -> None:
    backend, one, _, truth = slides
    zs = backend.zero_shot(api.ZeroShotRequest(one, "test-tiny", CLASSES, tiles=TILES))
    request = api.RefineRequest(one, marks(truth), model="test-tiny", labels=CLASSES)
    r = backend.refine(request)
    assert isinstance(r, api.ZeroShotResult) and r.labels == CLASSES and r.geometry == zs.geometry
    assert (r.class_map - 1 == truth).mean() >= 0.9
    assert ((zs.class_map - 1) == truth).mean() < 0.4
    for m in request.marks:
        for row, col in m.cells:
            assert r.class_map[row, col] == CLASSES.index(m.label) + 1
    # No marks: the zero-shot result, exactly.
    same = backend.refine(api.RefineRequest(one, (), model="test-tiny", labels=CLASSES))
    np.testing.assert_array_equal(same.class_map, zs.class_map)
    np.testing.assert_array_equal(same.probabilities, zs.probabilities)


def test_save_as_classifier_then_classify_another_slide(slides, tmp_path: Path, monkeypatch) -> None:
    backend, one, two, truth = slides
    m = marks(truth)
    refined = backend.refine(api.RefineRequest(one, m, model="test-tiny", labels=CLASSES))
    bundle = tmp_path / "my-classifier"
    info = backend.save_classifier(api.SaveClassifierRequest(str(bundle), (api.SlideMarks(one, m),),
                                                             model="test-tiny", labels=CLASSES))
    assert info.labels == CLASSES and info.n_marks == 25 and info.model == "test-tiny" and info.tiles == TILES
    assert is_classifier_bundle(bundle)

    # Applying it reads no pixel: the second slide's embeddings are cached, the model is unchanged.
    from backend.slides import slide as slide_module

    def no_reads(*a, **k):
        raise AssertionError("a pixel was read")

    monkeypatch.setattr(slide_module.Slide, "read_region", no_reads)
    result = backend.classify(api.ClassifyRequest(two, str(bundle)))
    assert result.labels == CLASSES
    # Slide two is slide one upside down: the same tiles get the labels refine gave them.
    np.testing.assert_array_equal(result.class_map[::-1], refined.class_map)
    # And on the slide it was trained on, the classifier gives refine's map.
    np.testing.assert_array_equal(backend.classify(api.ClassifyRequest(one, str(bundle))).class_map, refined.class_map)
    # A region: only the tiles under it, labelled as on the whole slide.
    box = api.Region.box(0, 0, 5 * 224, 5 * 224)
    part = backend.classify(api.ClassifyRequest(one, str(bundle), region=box))
    assert (part.class_map > 0).sum() == 25
    assert part.class_map.shape == refined.class_map.shape  # the slide's grid, tiles outside left 0
    np.testing.assert_array_equal(part.class_map[:5, :5], refined.class_map[:5, :5])


def test_bundle_reloads_and_is_listed(slides, tmp_path: Path) -> None:
    from backend.models.registry import describe_bundle, list_bundles, resolve_model

    backend, one, two, truth = slides
    m = marks(truth, k=3, seed=1)
    # Marks from two slides (slide two's cells are slide one's rows reversed), with a new class.
    rows = truth.shape[0]
    extra = api.TileMarks("my vessels", tuple((rows - 1 - r, c) for r, c in m[4].cells))
    request = api.SaveClassifierRequest(
        str(tmp_path / "bundles" / "two-slides"),
        (api.SlideMarks(one, m[:4]), api.SlideMarks(two, (extra,))),
        model="test-tiny", labels=CLASSES[:4], name="two slides",
    )
    info = backend.save_classifier(request)
    clf = load_classifier(info.path)
    assert clf.name == "two slides" and clf.class_names == (*CLASSES[:4], "my vessels")
    assert clf.model == "test-tiny" and clf.model_id == str(backend.model("test-tiny").model_id)
    assert clf.tiles == {"tile_size": 224, "mpp": 0.5, "min_tissue": 0.5}
    assert clf.card["marks_per_class"] == {**{c: 3 for c in CLASSES[:4]}, "my vessels": 3}
    assert [s["marks"] for s in clf.card["slides"]] == [12, 3]
    assert clf.card["prompts"] == {c: [] for c in CLASSES[:4]}
    again = load_classifier(info.path)
    np.testing.assert_array_equal(again.head.weight, clf.head.weight)
    np.testing.assert_array_equal(again.head.bias, clf.head.bias)
    assert clf.head.weight.shape == (5, 32)

    (listed,) = list_bundles(tmp_path / "bundles")
    assert listed.kind == "classifier" and listed.classes == clf.class_names and listed.model == "test-tiny"
    assert describe_bundle(info.path) == listed
    with pytest.raises(HistoclipError, match="not a CLIP model"):
        resolve_model(info.path)
    # Refusing to overwrite; a classifier made from a classifier keeps its classes.
    with pytest.raises(InputError, match="already exists"):
        backend.save_classifier(request)
    r = backend.refine(api.RefineRequest(one, (), classifier=info.path))
    assert r.labels == clf.class_names
    with pytest.raises(InputError, match="not both"):
        backend.refine(api.RefineRequest(one, (), classifier=info.path, labels=CLASSES))


def test_bad_bundles_and_marks_are_named(slides, tmp_path: Path) -> None:
    backend, one, _, truth = slides
    m = marks(truth, k=2)
    path = Path(backend.save_classifier(api.SaveClassifierRequest(
        str(tmp_path / "c"), (api.SlideMarks(one, m),), model="test-tiny", labels=CLASSES)).path)
    manifest = json.loads((path / "histoclip.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "histoclip.json").write_text(json.dumps({**manifest, "backbone": {**manifest["backbone"], "model_id": "x"}}))
    (other / "head.safetensors").write_bytes((path / "head.safetensors").read_bytes())

    (path / "head.safetensors").write_bytes(b"junk")
    with pytest.raises(HistoclipError, match="corrupt or was replaced"):
        load_classifier(path)
    with pytest.raises(HistoclipError, match="no such directory"):
        backend.classify(api.ClassifyRequest(one, str(tmp_path / "missing")))

    with pytest.raises(ModelMismatchError, match=r"was made with model 'x', but model 'test-tiny' is 'test-tiny'\. "
                       "Retrain it on this model"):
        backend.classify(api.ClassifyRequest(one, str(other)))

    with pytest.raises(InputError, match=r"mark 'tumor' at cell \(row 99, col 0\).*outside the grid"):
        backend.refine(api.RefineRequest(one, (api.TileMarks("tumor", ((99, 0),)),), model="test-tiny", labels=CLASSES))
    with pytest.raises(InputError, match="name the CLIP model"):
        backend.refine(api.RefineRequest(one, (), labels=CLASSES))


def test_search_a_cohort_index_for_a_class(slides, tmp_path: Path, one_faiss_thread) -> None:
    from tests.support.cohort_data import overlap

    backend, one, two, truth = slides
    index = str(tmp_path / "index")
    backend.build_index(api.IndexRequest((one.path, two.path), index, "test-tiny", TILES))
    bundle = tmp_path / "clf"
    backend.save_classifier(api.SaveClassifierRequest(str(bundle), (api.SlideMarks(one, marks(truth)),),
                                                      model="test-tiny", labels=CLASSES))
    target = CLASSES.index("smooth muscle")
    hits = backend.search_class(api.ClassSearchRequest(index, str(bundle), "smooth muscle", k=4)).hits
    assert len(hits) == 4
    for hit in hits:
        grid = truth if Path(hit.slide_path).name == "one.tif" else truth[::-1]
        cells = np.argwhere(grid == target)
        boxes = [(c * 224.0, r * 224.0, 224.0, 224.0) for r, c in cells]
        assert max(overlap(hit.box, b) for b in boxes) > 0  # every hit lies on smooth muscle tiles
    with pytest.raises(InputError, match="not one of the classifier's classes"):
        backend.search_class(api.ClassSearchRequest(index, str(bundle), "bone"))
