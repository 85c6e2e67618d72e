"""Refine without text: on a slide embedded with an image-only encoder, Refine starts from the
user's marks alone (no zero-shot prior). A few marks per class give a class map in which marked
tiles take their class, "where is it unsure?" works, and the result saves as a classifier bundle
that ``classify`` applies to the slide again.

The slide is the planted-texture slide of ``test_refine.py`` (225 tiles of 5 real textures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import InputError
from backend.tasks.refine import marks_only_head, refine, unsure_tiles
from tests.support.planted_textures import CLASSES, planted_tiles, write_tiles

pytestmark = pytest.mark.slow  # one embedding of a 225-tile slide by the tiny image-only model


@pytest.fixture(scope="module")
def slide(testdata: Path, image_only_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """(backend, slide ref, embeddings, per-tile truth) with the image-only model."""
    from backend.local import LocalBackend

    tiles, truth = planted_tiles(testdata)
    path = write_tiles(tmp_path_factory.mktemp("planted-io") / "planted.tif", tiles)
    backend = LocalBackend(device="cpu")
    ref = api.SlideRef(str(path))
    emb = backend.embeddings(ref, str(image_only_model), api.TileOptions())
    y = truth[emb.grid_index[:, 0], emb.grid_index[:, 1]]
    return backend, ref, emb, y


def marks(y: np.ndarray, emb, k: int = 3, seed: int = 0) -> tuple[api.TileMarks, ...]:
    rng = np.random.default_rng(seed)
    out = []
    for c, name in enumerate(CLASSES):
        idx = rng.choice(np.flatnonzero(y == c), k, replace=False)
        out.append(api.TileMarks(name, tuple((int(r), int(q)) for r, q in emb.grid_index[idx])))
    return tuple(out)


def test_marks_alone_give_a_class_map_where_marked_tiles_take_their_class(slide, image_only_model: Path) -> None:
    backend, ref, emb, y = slide
    given = marks(y, emb)
    result = backend.refine(api.RefineRequest(ref, given, model=str(image_only_model)))
    assert result.labels == CLASSES  # the marked classes, in marking order
    for m in given:
        for r, c in m.cells:
            assert result.class_map[r, c] == CLASSES.index(m.label) + 1
    labels = result.class_map[emb.grid_index[:, 0], emb.grid_index[:, 1]] - 1
    # three marks per class, no prior at all: most of the slide follows (random-weight features)
    assert (labels == y).mean() >= 0.7, (labels == y).mean()
    # "where is it unsure?": tiles ranked by margin; a marks-only prior has no class to disagree with
    probs = result.probabilities[:, emb.grid_index[:, 0], emb.grid_index[:, 1]].T
    prior = backend.refine(api.RefineRequest(ref, (), model=str(image_only_model)))
    prior_p = prior.probabilities[:, emb.grid_index[:, 0], emb.grid_index[:, 1]].T
    top = unsure_tiles(probs, prior_p, k=5)
    assert len(top) == 5
    margin = np.sort(probs, axis=1)[:, -1] - np.sort(probs, axis=1)[:, -2]
    assert margin[top].max() <= np.median(margin)


def test_no_marks_yet_is_the_unlabelled_tissue_grid_and_one_class_is_refused(slide, image_only_model: Path) -> None:
    backend, ref, emb, y = slide
    empty = backend.refine(api.RefineRequest(ref, (), model=str(image_only_model)))
    assert empty.labels == () and empty.probabilities.shape[0] == 0
    # every tissue tile is "unknown" (1), the rest background (0): the grid to paint on
    assert set(np.unique(empty.class_map)) <= {0, 1}
    assert int((empty.class_map == 1).sum()) == emb.n_tiles
    one = (api.TileMarks("tumor", tuple((int(r), int(c)) for r, c in emb.grid_index[:2])),)
    with pytest.raises(InputError, match="at least two classes; marked classes: only 'tumor'"):
        backend.refine(api.RefineRequest(ref, one, model=str(image_only_model)))


def test_marks_only_saves_a_classifier_that_classify_applies(slide, image_only_model: Path, tmp_path: Path) -> None:
    backend, ref, emb, y = slide
    given = marks(y, emb)
    refined = backend.refine(api.RefineRequest(ref, given, model=str(image_only_model)))
    info = backend.save_classifier(api.SaveClassifierRequest(
        str(tmp_path / "clf"), (api.SlideMarks(ref, given),), model=str(image_only_model)))
    assert info.labels == CLASSES and info.n_marks == 3 * len(CLASSES)
    assert info.model_id.startswith("bundle:tiny-vision@")
    applied = backend.classify(api.ClassifyRequest(ref, str(tmp_path / "clf")))
    assert applied.labels == CLASSES
    cells = emb.grid_index
    same = applied.class_map[cells[:, 0], cells[:, 1]] == refined.class_map[cells[:, 0], cells[:, 1]]
    assert same.mean() >= 0.95  # the map reproduces (marked tiles are pinned only in refine)
    assert backend.classifier(str(tmp_path / "clf")).card["prior"] == "none (marks only)"


def test_refine_from_an_empty_head_is_plain_logistic_on_the_marks(slide) -> None:
    _, _, emb, y = slide
    rng = np.random.default_rng(1)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in range(len(CLASSES))])
    r = refine(emb, marks_only_head(emb.embed_dim), idx, [CLASSES[int(c)] for c in y[idx]])
    assert r.head.class_names == CLASSES and r.report.marks_fit == len(idx)
    np.testing.assert_array_equal(r.class_map.labels[idx], y[idx] + 1)
