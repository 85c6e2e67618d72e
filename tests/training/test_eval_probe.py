"""The linear probe's AUROC against scikit-learn, test sets with absent classes, the CLI's class
checks, its closing line, the conventions written into results, and the progress bar's total.

Metrics are cross-checked against scikit-learn computed here from the same fitted model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from tile_classes import make_tile_classes

from backend.errors import InputError
from training.__main__ import main
from training.evaluation.data import align_classes, load_labelled
from training.evaluation.metrics import CONVENTIONS
from training.evaluation.probe import ProbeConfig, linear_probe

ONE_FIT = ProbeConfig(seeds=1, c_grid=(1.0,))  # with an explicit val set: one fit on all of train


def _blobs(n_per_class: int, classes: list[int], seed: int, spread: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian clusters in 5-D: probabilities well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(4, 5)) * 1.5
    y = np.repeat(classes, n_per_class)
    return centres[y] + rng.normal(scale=spread, size=(len(y), 5)), y


def _reference_proba(x: np.ndarray, y: np.ndarray, tx: np.ndarray, n_classes: int) -> np.ndarray:
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    proba = np.zeros((len(tx), n_classes))
    proba[:, clf.classes_] = clf.predict_proba(tx)
    return proba


def test_macro_auroc_is_one_vs_rest_on_raw_probabilities_with_an_absent_class() -> None:
    x, y = _blobs(40, [0, 1, 2, 3], seed=0)
    tx, ty = _blobs(25, [0, 1, 2], seed=1)  # class 3 absent from the test set
    r = linear_probe(x, y, tx, ty, n_classes=4, val_x=x, val_y=y, config=ONE_FIT)
    proba = _reference_proba(x, y, tx, 4)
    expected = np.mean([roc_auc_score(ty == c, proba[:, c]) for c in (0, 1, 2)])
    assert r.per_seed[0]["macro_auroc"] == pytest.approx(expected, abs=1e-9)
    # the old value (rows renormalised over the present classes) differs here: the test can tell them apart
    p = proba[:, :3] / proba[:, :3].sum(axis=1, keepdims=True)
    renormalised = roc_auc_score(ty, p, multi_class="ovr", average="macro", labels=[0, 1, 2])
    assert abs(renormalised - expected) > 1e-3
    # and macro F1 averages over all 4 classes (the absent one scores 0), not scikit-learn's present labels
    pred = proba.argmax(axis=1)
    assert r.per_seed[0]["macro_f1"] == pytest.approx(f1_score(ty, pred, labels=[0, 1, 2, 3], average="macro",
                                                                zero_division=0))


def test_macro_auroc_equals_scikit_learn_ovr_when_every_class_is_present() -> None:
    x, y = _blobs(40, [0, 1, 2, 3], seed=2)
    tx, ty = _blobs(20, [0, 1, 2, 3], seed=3)
    r = linear_probe(x, y, tx, ty, n_classes=4, val_x=x, val_y=y, config=ONE_FIT)
    proba = _reference_proba(x, y, tx, 4)
    assert r.per_seed[0]["macro_auroc"] == pytest.approx(
        roc_auc_score(ty, proba, multi_class="ovr", average="macro"), abs=1e-9)


def test_two_of_three_classes_in_the_test_set_do_not_crash() -> None:
    """Was ``ValueError: y should be a 1d array`` (scikit-learn took two columns as a binary case)."""
    x, y = _blobs(30, [0, 1, 2], seed=4)
    tx, ty = _blobs(20, [0, 2], seed=5)
    r = linear_probe(x, y, tx, ty, n_classes=3, val_x=x, val_y=y, config=ONE_FIT)
    proba = _reference_proba(x, y, tx, 3)
    expected = np.mean([roc_auc_score(ty == c, proba[:, c]) for c in (0, 2)])
    assert r.per_seed[0]["macro_auroc"] == pytest.approx(expected, abs=1e-9)
    # and the seeded summary's std is numpy's ddof=0, as the conventions say
    r5 = linear_probe(x, y, tx, ty, n_classes=3, config=ProbeConfig(seeds=5, c_grid=(0.1, 1.0)))
    values = [s["balanced_accuracy"] for s in r5.per_seed]
    assert r5.summary["balanced_accuracy"]["std"] == pytest.approx(np.std(values, ddof=0))
    assert "ddof=0" in CONVENTIONS["std"]


def test_one_class_present_gives_no_auroc() -> None:
    x, y = _blobs(20, [0, 1, 2], seed=6)
    tx, ty = _blobs(10, [1], seed=7)
    r = linear_probe(x, y, tx, ty, n_classes=3, val_x=x, val_y=y, config=ONE_FIT)
    assert np.isnan(r.per_seed[0]["macro_auroc"])


# --- the CLI: --val / --test classes by name, closing line, conventions, progress --------


@pytest.fixture(scope="module")
def tiles(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tile_classes(testdata, tmp_path_factory.mktemp("probetiles"), {"train": 6, "val": 3, "test": 4})


def _probe(tiles: Path, out: Path, *extra: str) -> int:
    return main(["eval", "linear-probe", "--model", "test-tiny", "--train", str(tiles / "train"), "--test",
                 str(tiles / "test"), "--shots", "2", "--seeds", "5", "--out", str(out), "--no-cache",
                 "--device", "cpu", *extra])


def test_val_classes_are_matched_by_name(tiles: Path, tmp_path: Path) -> None:
    train = load_labelled(tiles / "train")
    partial = tmp_path / "val2"
    partial.mkdir()
    for name in ("background", "ihc_kidney"):
        (partial / name).symlink_to(tiles / "val" / name, target_is_directory=True)
    val = load_labelled(partial)
    assert val.class_names == ("background", "ihc_kidney") and set(val.labels) == {0, 1}
    aligned = align_classes(val, train, "--val")
    # by name: background stays 0, ihc_kidney becomes the training set's index 2 (not 1, he_tissue)
    assert train.class_names == ("background", "he_tissue", "ihc_kidney")
    assert [aligned.labels[i] for i, p in enumerate(val.paths) if p.parent.name == "ihc_kidney"] == [2] * 3
    assert aligned.class_names == train.class_names and aligned.paths == val.paths

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "background").symlink_to(tiles / "val" / "background", target_is_directory=True)
    (renamed / "kidney").symlink_to(tiles / "val" / "ihc_kidney", target_is_directory=True)
    with pytest.raises(InputError) as info:
        align_classes(load_labelled(renamed), train, "--val")
    message = str(info.value)
    assert "class(es) ['kidney'] are not among the training classes" in message
    assert "['background', 'kidney']" in message and "['background', 'he_tissue', 'ihc_kidney']" in message


def test_cli_val_with_two_of_three_classes_runs_and_prints_its_metrics(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "val2"
    partial.mkdir()
    for name in ("background", "ihc_kidney"):
        (partial / name).symlink_to(tiles / "val" / name, target_is_directory=True)
    out = tmp_path / "lp.json"
    assert _probe(tiles, out, "--val", str(partial)) == 0
    captured = capsys.readouterr()
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    assert doc["settings"]["val"]["classes"] == ["background", "he_tissue", "ihc_kidney"]  # aligned to --train
    closing = captured.out.strip().splitlines()[-1]
    bal = m["balanced_accuracy"]
    assert closing.startswith(f"eval linear-probe: balanced_accuracy {bal['mean']:.4f} +- {bal['std']:.4f}, ")
    assert "macro_auroc" in closing and closing.endswith(f"-> {out}")
    conv = doc["settings"]["conventions"]
    assert set(conv) == {"balanced_accuracy", "macro_f1", "macro_auroc", "std"}
    assert "raw predicted probabilities" in conv["macro_auroc"] and "ddof=0" in conv["std"]
    assert "ALL classes" in conv["macro_f1"] and "present in y_true or y_pred" in conv["macro_f1"]
    # the bar counts every image the run encodes (6+3+4 per class... here 18 train, 6 val, 12 test)
    bars = [line for line in captured.err.splitlines() if line.startswith("linear-probe")]
    assert len(bars) == 1 and "36/36 [" in bars[0] and "?image/s" not in bars[0], captured.err


def test_cli_refuses_a_renamed_val_class_naming_both_sets(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for src, name in (("background", "background"), ("ihc_kidney", "kidney"), ("he_tissue", "he_tissue")):
        (renamed / name).symlink_to(tiles / "val" / src, target_is_directory=True)
    assert _probe(tiles, tmp_path / "x.json", "--val", str(renamed)) == 1
    err = capsys.readouterr().err
    assert re.search(r"--val \S*renamed: class\(es\) \['kidney'\] are not among the training classes", err), err
    assert "--train" in err and "'ihc_kidney'" in err and not (tmp_path / "x.json").exists()


def test_retrieval_result_names_the_map_normaliser(tiles: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ret.json"
    assert main(["eval", "retrieval", "--model", "test-tiny", "--images", str(tiles / "test"), "--out", str(out),
                 "--no-cache", "--device", "cpu", "--batch-size", "64"]) == 0
    conv = json.loads(out.read_text())["settings"]["conventions"]
    assert "min(k, R)" in conv["map@k"] and conv["recall@k"].startswith("hit rate")
    # one batch holds all 12 images: the bar still starts at 0 of a known total and shows a rate
    bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith("retrieval")]
    assert len(bar) == 1 and "12/12 [" in bar[0] and "?image/s" not in bar[0], bar


def test_a_bundle_trained_from_test_tiny_is_announced_as_trained(tiles: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Was "has RANDOM weights: its scores mean nothing" for a model that was trained."""
    from backend.models import load_model
    from backend.models.bundle import save_bundle
    from backend.report import random_weights_note

    tiny = load_model("test-tiny", device="cpu")
    assert random_weights_note("test-tiny", tiny, "its scores mean nothing") == (
        "NOTE: model 'test-tiny' has RANDOM weights: its scores mean nothing.")
    bundle = save_bundle(tiny, tmp_path / "tuned", trained_from="test-tiny")
    out = tmp_path / "ret.json"
    assert main(["eval", "retrieval", "--model", str(bundle), "--images", str(tiles / "test"), "--out", str(out),
                 "--no-cache", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"NOTE: model '{bundle}' was trained starting from RANDOM weights ('test-tiny'" in err, err
    assert "mean nothing" not in err
    assert load_model(bundle, device="cpu").trained_from == "test-tiny"  # from the manifest, for every bundle


def test_clipit_pair_announces_a_bundle_from_test_tiny_as_trained(testdata: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: ``pair`` with a fine-tuned bundle said "RANDOM weights: its pairs mean nothing"."""
    import pandas as pd

    from backend.models import load_model
    from backend.models.bundle import save_bundle

    bundle = save_bundle(load_model("test-tiny", device="cpu"), tmp_path / "tuned", trained_from="test-tiny")
    tiles = testdata / "tiles"
    pd.DataFrame({"path": [str(tiles / "kather1.tif"), str(tiles / "no-tissue.png")],
                  "kind": ["he_tissue", "background"]}).to_csv(tmp_path / "images.csv", index=False)
    pd.DataFrame({"report": ["Pink stroma with nuclei.", "Empty glass."]}).to_csv(tmp_path / "corpus.csv", index=False)
    assert main(["pair", "--model", str(bundle), "--images", str(tmp_path / "images.csv"), "--image-column", "path",
                 "--label-column", "kind", "--corpus", str(tmp_path / "corpus.csv"), "--text-column", "report",
                 "--k", "1", "--floor", "-1", "--no-cache", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "was trained starting from RANDOM weights ('test-tiny'" in err and "mean nothing" not in err, err
    assert "2/2 [" in err and "?image/s" not in err, err  # the bar knew its total before the first batch
