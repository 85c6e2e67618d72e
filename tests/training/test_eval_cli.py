"""``python -m training eval TASK`` end to end with test-tiny on labelled tiles cut from real slides."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from tile_classes import CLASSES, make_tile_classes

from backend.errors import InputError
from training.__main__ import main
from training.evaluation.data import load_class_spec, load_labelled


@pytest.fixture(scope="module")
def tiles(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tile_classes(testdata, tmp_path_factory.mktemp("tiles"), {"train": 10, "test": 6})


def _run(*argv: str) -> int:
    return main(["eval", *argv])


@pytest.mark.slow
def test_zeroshot_writes_result_png_and_uses_cache(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "zs.json"
    args = ["zeroshot", "--model", "test-tiny", "--images", str(tiles / "test"), "--classes",
            str(tiles / "classes.json"), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert _run(*args) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "histoclip-eval/1" and doc["task"] == "zeroshot"
    assert doc["model"]["model_id"] == "test-tiny" and doc["model"]["random_weights"] is True
    assert doc["dataset"]["n"] == 18 and len(doc["dataset"]["sha256"]) == 64
    assert set(doc["details"]["per_class_recall"]) == set(CLASSES)
    assert 0.0 <= doc["metrics"]["balanced_accuracy"] <= 1.0 and "acc@5" not in doc["metrics"]  # 3 classes
    assert doc["settings"]["templates"] == ["{}", "a tile of {}"]  # CONCH's CLASSNAME read as {}
    assert sum(map(sum, doc["details"]["confusion_matrix"])) == 18
    with Image.open(out.with_suffix(".png")) as im:
        assert im.size[0] > 100
    cached = list((tmp_path / "cache" / "eval-features").glob("*.npy"))
    assert len(cached) == 1
    cached[0].write_bytes(cached[0].read_bytes())  # same content; a rerun must read it, not the images
    stamp = cached[0].stat().st_mtime_ns
    assert _run(*args) == 0
    assert cached[0].stat().st_mtime_ns == stamp
    assert json.loads(out.read_text())["metrics"] == doc["metrics"]


@pytest.mark.slow
def test_linear_probe_separates_distinct_classes(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "lp.json"
    assert _run("linear-probe", "--model", "test-tiny", "--train", str(tiles / "train"), "--test", str(tiles / "test"),
                "--shots", "1,4", "--seeds", "5", "--out", str(out), "--no-cache", "--device", "cpu") == 0
    m = json.loads(out.read_text())["metrics"]
    # colour alone separates these classes: even random-weight features probe well
    assert m["balanced_accuracy"]["mean"] >= 0.9
    assert set(m["1shot_balanced_accuracy"]) == {"mean", "std"}
    assert "4shot_macro_auroc" in m


def test_retrieval_recall_and_merge(tiles: Path, tmp_path: Path) -> None:
    ret = tmp_path / "ret.json"
    assert _run("retrieval", "--model", "test-tiny", "--pairs", str(tiles / "test.csv"), "--images",
                str(tiles / "test"), "--out", str(ret), "--no-cache", "--device", "cpu") == 0
    m = json.loads(ret.read_text())["metrics"]
    assert {"image_to_text_recall@1", "text_to_image_median_rank", "image_map@5", "image_majority_vote@1"} <= set(m)
    assert m["image_top1_accuracy"] >= 0.8  # same colours, same class

    df = pd.read_csv(tiles / "test.csv")
    neg = df.copy()
    neg["caption"] = df["caption"].sample(frac=1, random_state=0).to_numpy()
    table = pd.concat([df.assign(label=1), neg.assign(label=0)])
    table["descriptor"] = list(df["label"]) * 2
    table.to_csv(tiles / "pairs01.csv", index=False)
    rec = tmp_path / "rec.json"
    assert _run("recall", "--model", "test-tiny", "--table", str(tiles / "pairs01.csv"), "--out", str(rec),
                "--no-cache", "--device", "cpu") == 0
    m = json.loads(rec.read_text())["metrics"]
    for k in (1, 3, 5, 10, 20):
        assert m[f"specific_recall@{k}"] >= m[f"nonspecific_recall@{k}"] - 1e-9  # a smaller corpus of the same images
    assert {"specific_mrr@10", "nonspecific_ndcg@10"} <= set(m)

    board = tmp_path / "board.md"
    assert _run("merge", str(ret), str(rec), "--out", str(board)) == 0
    assert "| test-tiny | test-tiny | retrieval |" in board.read_text()
    assert board.with_suffix(".csv").is_file()


def test_class_spec_errors_and_label_tables(tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = load_labelled(tiles / "test")
    assert data.class_names == tuple(sorted(CLASSES))
    (tmp_path / "few.json").write_text(json.dumps({"he_tissue": ["h&e"]}))
    with pytest.raises(InputError, match="no phrases for the data's class"):
        load_class_spec(tmp_path / "few.json", data.class_names)
    assert _run("linear-probe", "--model", "no-such-model", "--train", "t", "--test", "t", "--seeds", "3",
                "--out", "x") == 1  # refused before the (unknown) model is looked up
    assert "--seeds: 3 is too few; the probe reports mean +- std over at least 5 seeds" in capsys.readouterr().err
    table = load_labelled(tiles / "test.csv")
    assert len(table) == len(data) and table.class_names == data.class_names
    pd.DataFrame({"image": [3.0], "label": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="row 0: image must be a file path"):
        load_labelled(tmp_path / "bad.csv")
