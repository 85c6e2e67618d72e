"""Training and evaluation with an image-only encoder (``test-tiny``'s image tower as a
``towers: "image"`` bundle): what needs images only takes it (the CLIP-IT student, the linear
probe, kNN, image->image retrieval), what needs text refuses it in one line before it loads
(zero-shot, pairing, CLIP fine-tuning, CLIP-IT passages without ``--text-model``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clipit_data import make_clipit_data
from tile_classes import CLASSES, make_tile_classes

from tests.support.cli_run import run_main
from training.__main__ import main

CLIPIT_FAST = ["--batch-size", "8", "--lr", "3e-3", "--head-lr", "3e-2", "--warmup-steps", "2", "--workers", "0",
               "--device", "cpu", "--teacher-epochs", "60", "--teacher-hidden", "32", "--lora-rank", "4",
               "--epochs", "3", "--patience", "0"]


def run(argv: list[str]) -> tuple[int, str, str]:
    return run_main(main, argv)


@pytest.fixture(scope="module")
def tiles(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tile_classes(testdata, tmp_path_factory.mktemp("tiles"), {"train": 10, "test": 6})


@pytest.mark.slow
def test_clipit_trains_an_image_only_student_whose_bundle_histoclip_classify_applies(
    testdata: Path, image_only_model: Path, cmu_slide: Path, tmp_path: Path
) -> None:
    from backend.cli import main as histoclip
    from backend.models.classifier import load_classifier

    data = make_clipit_data(testdata, tmp_path / "data", {"train": 12, "val": 6, "test": 8})
    out = tmp_path / "run"
    code, stdout, err = run(["clipit", "--model", str(image_only_model), "--text-model", "test-tiny",
                             "--pairs", str(data / "pairs.csv"), "--val", str(data / "val"), "--test", str(data / "test"),
                             "--out", str(out), *CLIPIT_FAST])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    card = report["card"]
    assert card["base_model_id"].startswith("bundle:tiny-vision@") and card["text_model"] == "test-tiny"
    assert report["results"]["clipit"]["test"]["balanced_accuracy"] > 0.4  # 3 classes, chance 1/3
    clf = load_classifier(out / "classifier")
    assert clf.head.class_names == tuple(sorted(CLASSES))
    # the LoRA-tuned image tower is the bundle's own backbone; classify needs no text
    code = histoclip(["classify", str(cmu_slide), "--classifier", str(out / "classifier"), "--out", str(tmp_path / "map"),
                      "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "map" / "class_map.png").is_file()
    header, *rows = (tmp_path / "map" / "tiles.csv").read_text().splitlines()
    assert rows and {r.split(",")[header.split(",").index("class")] for r in rows} <= set(CLASSES)


def test_text_needs_refuse_an_image_only_model_before_loading(
    testdata: Path, image_only_model: Path, tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backend.models

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded before the capability check")

    monkeypatch.setattr(backend.models, "load_model", refuse)
    model = str(image_only_model)
    code, _, err = run(["clipit", "--model", model, "--pairs", str(tmp_path / "p.csv"), "--val", str(tiles / "test"),
                        "--out", str(tmp_path / "run"), *CLIPIT_FAST])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--text-model: model 'tiny-vision' embeds images only" in err and "give --text-model" in err
    code, _, err = run(["eval", "zeroshot", "--model", model, "--images", str(tiles / "test"), "--out",
                        str(tmp_path / "zs.json"), "--device", "cpu"])
    assert code == 1 and "zero-shot needs a vision-language model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["clip", "--model", model, "--train", str(tiles / "train"), "--out", str(tmp_path / "ft")])
    assert code == 1 and "CLIP fine-tuning needs a vision-language model" in err
    code, _, err = run(["pair", "--model", model, "--images", str(tiles / "train"), "--corpus", str(tmp_path / "c.txt"),
                        "--out", str(tmp_path / "pairs")])
    assert code == 1 and "embedding text needs a vision-language model" in err
    assert not (tmp_path / "zs.json").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_linear_probe_knn_and_image_retrieval_take_an_image_only_encoder(
    image_only_model: Path, tiles: Path, tmp_path: Path
) -> None:
    common = ["--model", str(image_only_model), "--no-cache", "--device", "cpu"]
    split = ["--train", str(tiles / "train"), "--test", str(tiles / "test")]
    code, _, err = run(["eval", "linear-probe", *common, *split, "--shots", "2", "--seeds", "5",
                        "--out", str(tmp_path / "lp.json")])
    assert code == 0, err
    lp = json.loads((tmp_path / "lp.json").read_text())
    assert lp["model"]["model_id"].startswith("bundle:tiny-vision@")
    assert lp["metrics"]["balanced_accuracy"]["mean"] >= 0.8  # colour alone separates these classes

    code, _, err = run(["eval", "knn", *common, *split, "--k", "5", "--out", str(tmp_path / "knn.json")])
    assert code == 0, err
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["task"] == "knn" and knn["settings"]["k"] == 5 and knn["settings"]["weights"] == "distance"
    assert knn["metrics"]["balanced_accuracy"] >= 0.8
    assert sum(map(sum, knn["details"]["confusion_matrix"])) == knn["dataset"]["n"]

    code, _, err = run(["eval", "retrieval", *common, "--images", str(tiles / "test"), "--out", str(tmp_path / "r.json")])
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["image_top1_accuracy"] >= 0.8


def test_knn_matches_a_hand_count_and_checks_its_inputs() -> None:
    import numpy as np

    from backend.errors import InputError
    from training.evaluation.knn import KnnConfig, knn_classify

    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    test = np.array([[0.8, 0.2], [0.2, 0.8], [0.95, 0.05]], np.float32)
    m = knn_classify(train, [0, 0, 1, 1], test, [0, 1, 1], ("a", "b"), KnnConfig(k=3, weights="uniform"))
    # 3 neighbours of each test point: two of its own side, one of the other -> predictions a, b, a
    assert m["balanced_accuracy"] == pytest.approx(0.75) and m["confusion_matrix"] == [[1, 0], [1, 1]]
    assert knn_classify(train, [0, 0, 1, 1], test, [0, 1, 1], ("a", "b"), KnnConfig(k=50))["k"] == 4.0
    with pytest.raises(InputError, match="--k: the number of neighbours must be at least 1"):
        KnnConfig(k=0)
    with pytest.raises(InputError, match="3 test features for 2 labels"):
        knn_classify(train, [0, 0, 1, 1], test, [0, 1], ("a", "b"))
