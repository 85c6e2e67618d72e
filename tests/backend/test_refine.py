"""Few-shot refinement (``backend.tasks.refine``) on a generated slide of planted real textures.

``test-tiny``'s zero-shot labels this slide largely wrong (random weights: nearly every tile one
class); five marks per class must correct it, marked tiles keep their mark, one mark must not
flip the slide, and without marks the map is the zero-shot map exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.tasks import zero_shot
from backend.tasks.refine import (
    LinearHead,
    RefineConfig,
    head_class_map,
    refine,
    text_head,
    unsure_tiles,
)
from backend.tasks.zero_shot import DEFAULT_TEMPLATES, class_text_features, parse_classes
from tests.support.planted_textures import CLASSES, planted_tiles, write_tiles

pytestmark = pytest.mark.slow  # one test-tiny embedding of a 225-tile slide (~10-30 s on a shared CPU)


@pytest.fixture(scope="module")
def planted(testdata: Path, tmp_path_factory: pytest.TempPathFactory):
    """(backend, embeddings, per-tile truth, zero-shot ClassMap, text head) of the planted slide."""
    from backend.api import SlideRef, TileOptions
    from backend.local import LocalBackend

    tiles, truth = planted_tiles(testdata)
    path = write_tiles(tmp_path_factory.mktemp("planted") / "planted.tif", tiles)
    backend = LocalBackend(device="cpu")
    emb = backend.embeddings(SlideRef(str(path)), "test-tiny", TileOptions())
    model = backend.model("test-tiny")
    cm = zero_shot(emb, list(CLASSES), model, text_cache=backend.text_cache)
    text = class_text_features(model, parse_classes(CLASSES), DEFAULT_TEMPLATES, backend.text_cache)
    head = text_head(text, float(model.logit_scale), CLASSES, cm.colors)
    y = truth[emb.grid_index[:, 0], emb.grid_index[:, 1]]
    return backend, emb, y, cm, head


def five_marks(y: np.ndarray, seed: int = 0, k: int = 5) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(len(CLASSES))])
    return idx, [CLASSES[int(c)] for c in y[idx]]


def test_zero_shot_is_largely_wrong_on_the_planted_slide(planted) -> None:
    _, emb, y, cm, _ = planted
    assert emb.n_tiles == 225
    assert ((cm.labels - 1) == y).mean() < 0.4  # the premise of the test


def test_five_marks_per_class_correct_at_least_90_percent(planted) -> None:
    _, emb, y, cm, head = planted
    idx, names = five_marks(y)
    r = refine(emb, head, idx, names)
    assert r.class_map.class_names == CLASSES
    accuracy = ((r.class_map.labels - 1) == y).mean()
    assert accuracy >= 0.90, accuracy
    unmarked = np.setdiff1d(np.arange(len(y)), idx)
    assert ((r.class_map.labels[unmarked] - 1) == y[unmarked]).mean() >= 0.88  # not just the marks
    assert r.report.marks_per_class == (5,) * 5 and r.report.marks_fit == len(idx)


def test_marked_tiles_take_their_mark_even_against_the_texture(planted) -> None:
    _, emb, y, _, head = planted
    idx, names = five_marks(y)
    # One tile marked with a class its texture is not (a user's call, or an odd tile).
    odd = int(np.flatnonzero(y == 0)[-1])
    idx, names = np.append(idx, odd), [*names, CLASSES[3]]
    r = refine(emb, head, idx, names)
    np.testing.assert_array_equal(r.class_map.labels[idx], [CLASSES.index(n) + 1 for n in names])
    np.testing.assert_array_equal(r.class_map.probabilities[odd], np.eye(5, dtype=np.float32)[3])
    # A tile marked twice keeps its last mark.
    again = refine(emb, head, [odd, odd], [CLASSES[1], CLASSES[2]])
    assert again.class_map.labels[odd] == 3 and len(again.marked) == 1


def test_no_marks_restore_the_zero_shot_map_exactly(planted) -> None:
    _, emb, y, cm, head = planted
    r = refine(emb, head, [], [])
    np.testing.assert_array_equal(r.class_map.labels, cm.labels)
    np.testing.assert_array_equal(r.class_map.probabilities, cm.probabilities)
    assert r.head is head
    # Marks added, then all removed: back to the zero-shot map, bit for bit.
    idx, names = five_marks(y)
    assert not np.array_equal(refine(emb, head, idx, names).class_map.labels, cm.labels)
    np.testing.assert_array_equal(refine(emb, head, idx[:0], names[:0]).class_map.labels, cm.labels)


def test_one_mark_does_not_flip_the_slide(planted) -> None:
    _, emb, y, cm, head = planted
    others = []
    for c in range(len(CLASSES)):
        tile = int(np.flatnonzero(y == c)[0])
        r = refine(emb, head, [tile], [CLASSES[c]])
        changed = r.class_map.labels != cm.labels
        assert r.class_map.labels[tile] == c + 1
        assert changed.mean() < 0.4, (CLASSES[c], changed.mean())  # measured: at most 1/3
        others.append(changed[y != c].mean())
    # Of the tiles of the other classes, one mark relabels few (measured 7 % on average).
    assert np.mean(others) < 0.15, others
    # Five marks of one class: still not the whole slide.
    idx = np.flatnonzero(y == 1)[:5]
    changed = refine(emb, head, idx, [CLASSES[1]] * 5).class_map.labels != cm.labels
    assert changed.mean() < 0.5


def test_a_new_class_from_examples_alone(planted) -> None:
    _, emb, y, _, head = planted
    # Prompts for four classes only; the fifth is marked by name, with no prompt.
    prior = LinearHead(head.class_names[:4], head.colors[:4], head.weight[:4], head.bias[:4])
    idx, names = five_marks(y)
    names = [n if n != CLASSES[4] else "my vessels" for n in names]
    r = refine(emb, prior, idx, names)
    assert r.class_map.class_names == (*CLASSES[:4], "my vessels")
    assert len(set(r.class_map.colors)) == 5
    new = y == 4
    assert (r.class_map.labels[new] == 5).mean() >= 0.9


def test_refined_head_reproduces_the_map(planted) -> None:
    """The fitted head alone (what a classifier bundle stores) gives the refined map's labels."""
    _, emb, y, _, head = planted
    idx, names = five_marks(y)
    r = refine(emb, head, idx, names)
    np.testing.assert_array_equal(head_class_map(emb, r.head).labels, r.class_map.labels)


def test_unsure_tiles_rank_low_margins_and_disagreement_first() -> None:
    p = np.array([[0.9, 0.1], [0.55, 0.45], [0.6, 0.4], [0.99, 0.01]], np.float32)
    np.testing.assert_array_equal(unsure_tiles(p, k=2), [1, 2])
    prior = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.0, 1.0]], np.float32)  # tile 3: prior says 1
    np.testing.assert_array_equal(unsure_tiles(p, prior, k=2), [3, 1])
    np.testing.assert_array_equal(unsure_tiles(p, prior, k=10, exclude=[3, 1]), [2, 0])
    # A new class (no prior column) is never "disagreement".
    p3 = np.array([[0.1, 0.1, 0.8]], np.float32)
    assert unsure_tiles(p3, prior[:1], k=1).tolist() == [0]


def test_bad_marks_and_settings_are_named(planted) -> None:
    _, emb, _, _, head = planted
    with pytest.raises(InputError, match="marked tile 999 is not one of"):
        refine(emb, head, [999], [CLASSES[0]])
    with pytest.raises(InputError, match="2 marked tiles but 1 class names"):
        refine(emb, head, [0, 1], [CLASSES[0]])
    with pytest.raises(InputError, match="empty class name"):
        refine(emb, head, [0], ["  "])
    with pytest.raises(InputError, match="weight_pull and bias_pull must be > 0"):
        RefineConfig(weight_pull=0.0)
    with pytest.raises(InputError, match="do not agree"):
        LinearHead(("a", "b"), ((0, 0, 0),) * 2, np.zeros((3, 4)), np.zeros(2))
