"""Evaluation metrics against answers worked out by hand on constructed embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.errors import InputError
from training.evaluation.metrics import (
    classification_metrics,
    cross_modal_retrieval,
    image_retrieval,
    ranking_metrics,
    specific_recall,
)
from training.evaluation.probe import ProbeConfig, few_shot_probes, linear_probe
from training.evaluation.results import SCHEMA, make_result, merge_results, read_result, write_result


def test_classification_known_answers() -> None:
    # 3 classes; rows: true 0 -> ranked (0,1,2); true 0 -> (1,0,2); true 1 -> (1,...); true 2 -> (0,2,1)
    scores = np.array([[3, 2, 1], [2, 3, 1], [0, 5, 1], [3, 1, 2]], float)
    m = classification_metrics(scores, [0, 0, 1, 2], ["a", "b", "c"], ks=(1, 2, 5))
    assert m["acc@1"] == pytest.approx(2 / 4)
    assert m["acc@2"] == pytest.approx(4 / 4)
    assert "acc@5" not in m  # more than the 3 classes
    assert m["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    # F1: a: p=1/2 r=1/2 -> .5; b: p=1/2 r=1 -> 2/3; c: 0
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_classification_rejects_bad_labels() -> None:
    with pytest.raises(InputError, match="0..1"):
        classification_metrics(np.zeros((2, 2)), [0, 2], ["a", "b"])
    with pytest.raises(InputError, match="shape"):
        classification_metrics(np.zeros((2, 3)), [0, 1], ["a", "b"])


def _unit(*vecs: list[float]) -> np.ndarray:
    return np.array(vecs, float)


def test_cross_modal_retrieval_several_captions() -> None:
    # image 0 ~ x, image 1 ~ y; captions: 0 -> img0 (x), 1 -> img0 (y-ish, wrong side), 2 -> img1 (y)
    images = _unit([1, 0], [0, 1])
    texts = _unit([1, 0.1], [0.1, 1], [0, 1])
    m = cross_modal_retrieval(images, texts, [0, 0, 1], ks=(1, 2))
    # image->text: img0's best caption is 0 at rank 1; img1's caption 2 at rank 1 ([0,1] beats [0.1,1])
    assert m["image_to_text_recall@1"] == 1.0
    # text->image: caption 1 ranks img1 first, its image (img0) second
    assert m["text_to_image_recall@1"] == pytest.approx(2 / 3)
    assert m["text_to_image_recall@2"] == 1.0
    assert m["text_to_image_mean_rank"] == pytest.approx(4 / 3)
    assert m["text_to_image_median_rank"] == 1.0


def test_image_retrieval_hand_computed() -> None:
    # points on a line; classes A A B A; cosine via 2-D angles
    angles = np.deg2rad([0, 10, 25, 90])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = [0, 0, 1, 0]
    m = image_retrieval(emb, y, ks=(1, 2, 3))
    # neighbours: q0: 1(A) 2(B) 3(A); q1: 0(A) 2(B) 3(A)
    #             q2: 1(A) 0(A) 3(A); q3: 2(B) 1(A) 0(A)
    assert m["top1_accuracy"] == pytest.approx(2 / 4)  # q0, q1 hit; q2 (class B alone) and q3 miss
    assert m["top2_accuracy"] == pytest.approx(3 / 4)
    # majority@2: q0 {A,B} tie -> first A: ok; q1 {A,B} -> A ok; q2 {A,A} != B; q3 {B,A} tie -> B != A
    assert m["majority_vote@2"] == pytest.approx(2 / 4)
    # AP@3 (R=2 for A queries; q2 has R=0, left out):
    # q0: rel 1,0,1 -> (1 + 2/3)/2; q1: 1,0,1 -> same; q3: 0,1,1 -> (1/2 + 2/3)/2
    expected = ((1 + 2 / 3) / 2 * 2 + (1 / 2 + 2 / 3) / 2) / 3
    assert m["map@3"] == pytest.approx(expected)
    assert m["queries_without_match"] == 1.0


def test_ranking_metrics_mrr_ndcg() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.9, 0.3]])
    relevant = np.array([[False, True, False, True], [True, False, False, False]])
    m = ranking_metrics(scores, relevant, ks=(1, 2, 4), cutoff=3)
    # q0 first relevant at rank 2, q1 at rank 4
    assert m["recall@1"] == 0.0 and m["recall@2"] == 0.5 and m["recall@4"] == 1.0
    assert m["mrr@3"] == pytest.approx((1 / 2 + 0) / 2)
    # q0 nDCG@3: DCG = 1/log2(3); IDCG = 1 + 1/log2(3); q1: nothing in top 3
    q0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx(q0 / 2)


def test_specific_recall_restricts_corpus_to_descriptor() -> None:
    # the query's image is second overall, but first among images of its descriptor
    corpus = _unit([1, 0], [0.9, 0.3], [0, 1])
    groups = ["other", "cells", "cells"]
    m = specific_recall(_unit([1, 0.1]), corpus, np.array([[False, True, False]]), ["cells"], groups, ks=(1, 3))
    assert m["nonspecific_recall@1"] == 0.0 and m["nonspecific_recall@3"] == 1.0
    assert m["specific_recall@1"] == 1.0
    assert m["specific_mrr@10"] == 1.0 and m["nonspecific_mrr@10"] == 0.5


def test_linear_probe_separable_reaches_one() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 5
    y = np.repeat(np.arange(3), 30)
    x = centres[y] + 0.3 * rng.standard_normal((90, 8))
    ty = np.repeat(np.arange(3), 10)
    tx = centres[ty] + 0.3 * rng.standard_normal((30, 8))
    r = linear_probe(x, y, tx, ty, config=ProbeConfig(seeds=5, c_grid=(0.01, 1.0)))
    assert len(r.per_seed) == 5
    assert r.summary["balanced_accuracy"] == {"mean": 1.0, "std": 0.0}
    assert r.summary["macro_auroc"]["mean"] == 1.0
    few = few_shot_probes(x, y, tx, ty, shots=(1, 4), config=ProbeConfig(seeds=5, c_grid=(1.0,)))
    assert [f.shots for f in few] == [1, 4, None]
    assert few[1].summary["balanced_accuracy"]["mean"] >= 0.9


def test_linear_probe_random_labels_near_chance() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((80, 4)), rng.integers(0, 2, 80)
    tx, ty = rng.standard_normal((40, 4)), rng.integers(0, 2, 40)
    r = linear_probe(x, y, tx, ty, config=ProbeConfig(seeds=5))
    assert r.summary["balanced_accuracy"]["mean"] < 0.75


def test_result_schema_and_merge(tmp_path) -> None:
    paths = []
    for i, name in enumerate(["base", "tuned"]):
        doc = make_result("zeroshot", model={"name": name, "model_id": name}, dataset={"name": "tiles", "n": 4},
                          settings={}, metrics={"balanced_accuracy": 0.5 + i / 4, "auroc": {"mean": 0.7, "std": 0.01},
                                                "nan_metric": float("nan")})
        paths.append(write_result(doc, tmp_path / f"{name}.json"))
    assert read_result(paths[0])["schema"] == SCHEMA
    assert json.loads(paths[0].read_text())["metrics"]["nan_metric"] is None
    md, csv_path = merge_results(paths, tmp_path / "board.md")
    text = md.read_text()
    assert "| tuned | tuned | zeroshot | tiles | 0.7500 | 0.7000 ± 0.0100 |" in text
    assert csv_path.read_text().splitlines()[0] == "model,model_id,task,dataset,balanced_accuracy,auroc,nan_metric"
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(InputError, match="bad.json.*not an evaluation result"):
        merge_results([tmp_path / "bad.json"], tmp_path / "x.md")
    with pytest.raises(InputError, match="metric 'x'"):
        make_result("t", model={}, dataset={}, settings={}, metrics={"x": "text"})
