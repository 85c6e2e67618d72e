"""Slide-level zero-shot (MI-Zero pooling) on generated slides of planted real textures, with a
test-tiny fine-tuned here so that tile zero-shot separates the textures: top-k pooling finds the
planted minority class where mean pooling does not, the evidence lies in the planted block, a
classifier bundle pools the same way, and the pure pooling is checked on hand-made scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.embed.types import TileLayout
from backend.errors import InputError
from backend.local import LocalBackend
from backend.tasks.slide_zero_shot import Pooling, PoolingOptions, pool_tile_scores
from tests.support.planted_textures import CLASSES
from tests.support.slide_level_data import BLOCK, PLANTED, planted_slide

LABELS = tuple(CLASSES[k] for k in PLANTED)


@pytest.fixture(scope="module")
def tuned(texture_model: str) -> str:
    return texture_model


@pytest.fixture(scope="module")
def planted(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One slide per slide-level class: background texture with that class's block planted."""
    folder = tmp_path_factory.mktemp("planted")
    return {CLASSES[k]: planted_slide(testdata, folder / f"planted-{i}.tif", k, seed=i) for i, k in enumerate(PLANTED)}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    with LocalBackend(cache_dir=tmp_path_factory.mktemp("slide-cache"), device="cpu") as b:
        yield b


def request(slide: Path, model: str, **kw) -> api.SlideZeroShotRequest:
    return api.SlideZeroShotRequest(api.SlideRef(str(slide)), model, LABELS, **kw)


@pytest.mark.slow
def test_topk_finds_the_planted_minority_where_mean_does_not(backend, tuned: str, planted: dict[str, Path]) -> None:
    topk = {truth: backend.slide_zero_shot(request(slide, tuned, k=3)) for truth, slide in planted.items()}
    mean = {truth: backend.slide_zero_shot(request(slide, tuned, pooling="mean")) for truth, slide in planted.items()}
    for truth, r in topk.items():
        assert r.predicted == truth, (truth, r.probabilities, r.scores)
        assert r.n_pooled == 3 and r.n_tiles == 64 and r.pooling == "topk"
        assert r.runner_up != r.predicted and abs(sum(r.probabilities) - 1) < 1e-5
    # mean pooling sees the background: one verdict for both slides, so one of them is wrong
    assert len({r.predicted for r in mean.values()}) == 1, {t: r.probabilities for t, r in mean.items()}
    assert all(r.n_pooled == 64 for r in mean.values())


@pytest.mark.slow
def test_evidence_tiles_lie_in_the_planted_block(backend, tuned: str, planted: dict[str, Path]) -> None:
    (r0, r1), (c0, c1) = BLOCK
    for truth, slide in planted.items():
        r = backend.slide_zero_shot(request(slide, tuned, k=3, evidence=4))
        mine = [e for e in r.evidence if e.label == truth]
        assert [e.rank for e in mine] == [0, 1, 2, 3] and len(r.evidence) == 4 * len(LABELS)
        assert all(r0 <= e.cell[0] < r1 and c0 <= e.cell[1] < c1 for e in mine), [e.cell for e in mine]
        assert all(e.box == (e.cell[1] * 224.0, e.cell[0] * 224.0, 224.0, 224.0) for e in mine)
        assert [e.score for e in mine] == sorted((e.score for e in mine), reverse=True)


@pytest.mark.slow
def test_fraction_pooling_and_unknown(backend, tuned: str, planted: dict[str, Path]) -> None:
    slide = planted[LABELS[0]]
    r = backend.slide_zero_shot(request(slide, tuned, pooling="fraction", fraction=0.05))
    assert r.n_pooled == 4 and r.predicted == LABELS[0]  # ceil(0.05 x 64)
    r = backend.slide_zero_shot(request(slide, tuned, k=3, unknown_threshold=1.0))
    assert r.predicted == "unknown" and r.runner_up in LABELS


@pytest.mark.slow
def test_classifier_bundle_pools_its_logits(backend, tuned: str, planted: dict[str, Path], tmp_path: Path) -> None:
    """A classifier saved from marks (one planted slide's block and background) gives the
    planted slide its planted class by top-k."""
    truth = LABELS[0]
    (r0, r1), (c0, c1) = BLOCK
    block = tuple((r, c) for r in range(r0, r1) for c in range(c0, c1))
    marks = (api.TileMarks(truth, block),)
    info = backend.save_classifier(api.SaveClassifierRequest(
        str(tmp_path / "clf"), (api.SlideMarks(api.SlideRef(str(planted[truth])), marks),), model=tuned,
        labels=LABELS))
    r = backend.slide_zero_shot(api.SlideZeroShotRequest(api.SlideRef(str(planted[truth])), classifier=info.path, k=3))
    assert r.labels == info.labels and r.predicted == truth
    with pytest.raises(InputError, match="give either prompts \\(labels\\) or a classifier, not both"):
        backend.slide_zero_shot(api.SlideZeroShotRequest(api.SlideRef(str(planted[truth])), labels=LABELS,
                                                         classifier=info.path))


def test_bad_requests_are_named(backend, planted: dict[str, Path]) -> None:
    slide = planted[LABELS[0]]
    with pytest.raises(InputError, match="pooling k: the number of top tiles must be at least 1, got 0"):
        backend.slide_zero_shot(request(slide, "test-tiny", k=0))
    with pytest.raises(InputError, match="pooling fraction: must be within \\(0, 1\\], got 1.5"):
        backend.slide_zero_shot(request(slide, "test-tiny", pooling="fraction", fraction=1.5))
    with pytest.raises(InputError, match="name the vision-language model"):
        backend.slide_zero_shot(api.SlideZeroShotRequest(api.SlideRef(str(slide)), labels=LABELS))
    with pytest.raises(InputError, match="duplicate class"):
        backend.slide_zero_shot(api.SlideZeroShotRequest(api.SlideRef(str(slide)), "test-tiny", ("a", "A ")))


def test_pooling_by_hand() -> None:
    """Top-k is each class's own k best tiles (not one set of tiles for all classes)."""
    layout = TileLayout(np.array([[0, 0], [10, 0], [20, 0], [30, 0]]), np.array([[0, 0], [0, 1], [0, 2], [0, 3]]),
                        (1, 4), 10.0, 10.0, (0.0, 0.0))
    scores = np.array([[0.9, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.35]], dtype=np.float32)
    top1 = pool_tile_scores(scores, ("a", "b"), layout, scale=10.0, pooling=PoolingOptions(Pooling.TOPK, k=1),
                            n_evidence=2)
    assert top1.label == "a" and np.allclose(top1.scores, [0.9, 0.35])
    assert top1.evidence.tolist() == [[0, 1], [3, 0]]
    e = np.exp(10 * np.array([0.9, 0.35]))
    assert np.allclose(top1.probabilities, e / e.sum())
    mean = pool_tile_scores(scores, ("a", "b"), layout, pooling=PoolingOptions("mean"))
    assert mean.label == "b" and np.allclose(mean.scores, [0.3, 0.3125])
    assert PoolingOptions(k=50).n_pooled(4) == 4  # capped at the tile count, as CONCH's code does
    with pytest.raises(InputError, match="pooling: 'max' is not a pooling"):
        PoolingOptions("max")
