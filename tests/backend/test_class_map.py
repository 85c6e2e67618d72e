"""One class-map computation (issue 20 item 2): zero-shot, a classifier and a refine give the same
map for the same scores, because all three go through ``backend.tasks.class_map.build_class_map``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.embed import SlideEmbeddings
from backend.errors import InputError
from backend.models.classifier import Classifier, load_classifier, save_classifier
from backend.palette import UNKNOWN_COLOR, UNKNOWN_NAME, class_colors
from backend.tasks.class_map import build_class_map
from backend.tasks.marks_only import unlabelled_map
from backend.tasks.refine import head_class_map, refine, text_head, with_marks
from backend.tasks.zero_shot import ClassPrompt, classify

CLASSES = ("tumor", "stroma", "fat", "necrosis")
SCALE = 30.0


def _embeddings(n_rows: int = 6, n_cols: int = 7, dim: int = 16, seed: int = 0) -> SlideEmbeddings:
    """Random unit tile vectors on a grid with holes (no tissue on every third cell)."""
    rng = np.random.default_rng(seed)
    cells = np.argwhere(np.ones((n_rows, n_cols), bool))
    cells = cells[np.arange(len(cells)) % 3 != 2]
    v = rng.normal(size=(len(cells), dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return SlideEmbeddings(slide_fingerprint="f" * 32, slide_name="s.svs", slide_path="/nowhere/s.svs",
                           model_id="m", spec=None, spec_key="t", coords=cells[:, ::-1] * 100, tile_extent=100.0,
                           grid_index=cells, grid_shape=(n_rows, n_cols), vectors=v, stride=100.0,
                           origin=(0.0, 0.0), slide_dimensions=(n_cols * 100, n_rows * 100))


def _text(dim: int = 16, seed: int = 1) -> np.ndarray:
    t = np.random.default_rng(seed).normal(size=(len(CLASSES), dim)).astype(np.float32)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def _same(a, b) -> None:
    assert a.class_names == b.class_names and a.colors == b.colors
    assert a.unknown_threshold == b.unknown_threshold and a.unknown_value == b.unknown_value
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.label_map, b.label_map)
    assert (a.slide_name, a.slide_fingerprint, a.model_id) == (b.slide_name, b.slide_fingerprint, b.model_id)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_zero_shot_classifier_and_refine_give_one_map(tmp_path: Path, threshold: float | None) -> None:
    emb, text = _embeddings(), _text()
    zs = classify(emb, text, [ClassPrompt(c) for c in CLASSES], SCALE, unknown_threshold=threshold)
    head = text_head(text, SCALE, CLASSES, class_colors(len(CLASSES)))
    # A classifier bundle holding the same head, written and read back (its path's computation).
    clf = Classifier(name="zs", head=head, model="m", model_id="m",
                     tiles={"tile_size": 224, "mpp": 0.5, "min_tissue": 0.5}, unknown_threshold=threshold)
    loaded = load_classifier(save_classifier(clf, tmp_path / "zs"))
    from_bundle = head_class_map(emb, loaded.head, unknown_threshold=loaded.unknown_threshold)
    refined = refine(emb, head, [], [], unknown_threshold=threshold).class_map  # no marks: the prior's map

    for other in (head_class_map(emb, head, unknown_threshold=threshold), from_bundle, refined):
        _same(zs, other)
    if threshold is not None:  # the threshold did label some tiles "unknown", the same ones everywhere
        unknown = zs.labels == len(CLASSES) + 1
        assert 0 < unknown.sum() < len(unknown)
        assert zs.counts()[UNKNOWN_NAME] == int(unknown.sum())
        assert zs.label_colors()[len(CLASSES) + 1] == UNKNOWN_COLOR


def test_probabilities_give_the_map_their_logits_give() -> None:
    emb, text = _embeddings(), _text()
    logits = SCALE * text @ emb.vectors.T
    from_logits = build_class_map(logits.copy(), CLASSES, class_colors(4), emb, unknown_threshold=0.4)
    probs = np.exp(logits - logits.max(axis=0))
    probs /= probs.sum(axis=0)
    from_probs = build_class_map(probs, CLASSES, class_colors(4), emb, softmax=False, unknown_threshold=0.4)
    np.testing.assert_array_equal(from_logits.labels, from_probs.labels)
    np.testing.assert_allclose(from_logits.probabilities, from_probs.probabilities, rtol=1e-6)
    np.testing.assert_allclose(from_logits.probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_marks_and_marks_alone_go_through_the_same_function() -> None:
    emb, text = _embeddings(), _text()
    cm = head_class_map(emb, text_head(text, SCALE, CLASSES, class_colors(4)), unknown_threshold=0.9)
    unknown = np.flatnonzero(cm.labels == cm.unknown_value)
    assert len(unknown) >= 2
    marked, rows = unknown[:2], np.array([3, 0])
    out = with_marks(cm, marked, rows)
    np.testing.assert_array_equal(out.labels[marked], rows + 1)  # a mark is never "unknown"
    keep = np.setdiff1d(np.arange(len(cm.labels)), marked)
    np.testing.assert_array_equal(out.labels[keep], cm.labels[keep])
    np.testing.assert_array_equal(out.probabilities[marked].sum(axis=1), 1.0)

    empty = unlabelled_map(emb)  # no class yet: every tissue tile "unknown" (value 1)
    assert empty.class_names == () and empty.unknown_value == 1
    np.testing.assert_array_equal(empty.labels, 1)
    assert empty.counts() == {UNKNOWN_NAME: emb.n_tiles}


def test_bad_scores_and_thresholds_are_named() -> None:
    emb = _embeddings()
    with pytest.raises(InputError, match=r"scores \(3, 28\), 4 class names and 4 colours"):
        build_class_map(np.zeros((3, emb.n_tiles), np.float32), CLASSES, class_colors(4), emb)
    with pytest.raises(InputError, match="unknown_threshold: must be within"):
        build_class_map(np.zeros((4, emb.n_tiles), np.float32), CLASSES, class_colors(4), emb, unknown_threshold=1.5)
    with pytest.raises(InputError, match="with no class, every tile is 'unknown'"):
        build_class_map(np.zeros((0, emb.n_tiles), np.float32), (), (), emb)


@pytest.mark.slow
def test_the_backends_three_paths_give_one_map(cmu_slide: Path, tmp_path: Path) -> None:
    """Through ``LocalBackend``: zero-shot, refine without marks, and classify with the classifier
    saved from those prompts (no marks: its head is the zero-shot head) give the same map; the
    bundle keeps the prompts' colours."""
    from backend.local import LocalBackend
    from backend.models.classifier import load_classifier
    from backend.palette import to_hex

    colors = ("#123456", "#d62728", "#00ff7f", "#abcdef")

    tiles = api.TileOptions(tile_size=64, mpp=2.0)
    slide = api.SlideRef(str(cmu_slide))
    backend = LocalBackend(device="cpu")
    try:
        zs = backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", CLASSES, tiles=tiles, unknown_threshold=0.3))
        refined = backend.refine(api.RefineRequest(slide, (), model="test-tiny", labels=CLASSES, tiles=tiles,
                                                   unknown_threshold=0.3))
        info = backend.save_classifier(api.SaveClassifierRequest(
            str(tmp_path / "clf"), (api.SlideMarks(slide, ()),), model="test-tiny", labels=CLASSES, tiles=tiles,
            unknown_threshold=0.3, colors=colors))
        classified = backend.classify(api.ClassifyRequest(slide, info.path))
        with pytest.raises(InputError, match="colors: 3 colours given for 4 classes"):
            backend.save_classifier(api.SaveClassifierRequest(
                str(tmp_path / "bad"), (api.SlideMarks(slide, ()),), model="test-tiny", labels=CLASSES, tiles=tiles,
                colors=colors[:3]))
        with pytest.raises(InputError, match="colour '#12345': expected #rrggbb"):
            backend.refine(api.RefineRequest(slide, (), model="test-tiny", labels=CLASSES, tiles=tiles,
                                             colors=("#12345", *colors[1:])))
    finally:
        backend.close()
    assert tuple(to_hex(c) for c in load_classifier(info.path).head.colors) == colors
    for other in (refined, classified):
        assert other.labels == zs.labels and other.geometry == zs.geometry
        np.testing.assert_array_equal(other.class_map, zs.class_map)
        np.testing.assert_array_equal(other.probabilities, zs.probabilities)
