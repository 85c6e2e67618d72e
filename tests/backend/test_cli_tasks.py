"""``histoclip embed | zero-shot | heatmap | demo`` in-process, with the tiny random model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main

FAST = ["--model", "test-tiny", "--mpp", "2.0", "--tile-size", "64", "--device", "cpu"]


def test_embed_skips_cached_slides_and_reports_bad_ones(
    cmu_slide: Path, testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(tmp_path / "cache"))  # a cache no other test filled
    bad = testdata / "bad" / "broken.svs"
    assert main(["embed", str(cmu_slide), str(bad), *FAST]) == 1
    first = capsys.readouterr()
    assert "RANDOM weights" in first.out
    assert "CMU-1-Small-Region.svs: 34 tiles embedded (test-tiny, grid 12 x 9)" in first.out
    assert "histoclip embed: error: broken.svs: not a slide or image format we can read" in first.err
    assert main(["embed", str(cmu_slide), *FAST]) == 0
    assert "CMU-1-Small-Region.svs: 34 tiles already cached" in capsys.readouterr().out


def test_zero_shot_writes_overlay_table_and_qupath_geojson(
    cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = tmp_path / "classes.txt"
    labels.write_text("# classes\ntumor: carcinoma, tumour cells\nstroma: connective tissue\nfat\n")
    out = tmp_path / "out"
    assert main(["zero-shot", str(cmu_slide), "--labels-file", str(labels), "--out", str(out),
                 "--unknown-threshold", "0.34", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "CMU-1-Small-Region.svs: 34 tiles:" in printed

    with open(out / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 34
    prob_cols = [c for c in rows[0] if c.startswith("p_")]
    assert len(prob_cols) == 3, rows[0].keys()
    for r in rows:
        probs = [float(r[c]) for c in prob_cols]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert float(r["probability"]) == pytest.approx(max(probs), abs=1e-6)
    names = {r["class"] for r in rows}
    assert names <= {"tumor", "stroma", "fat", "unknown"}

    doc = json.loads((out / "tiles.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 34
    for feat in doc["features"]:
        props = feat["properties"]
        assert props["classification"]["name"] in {"tumor", "stroma", "fat", "unknown"}
        assert len(props["classification"]["color"]) == 3
        assert feat["geometry"]["type"] == "Polygon"
        measured = props["measurements"]
        assert set(measured) == {"p(tumor)", "p(stroma)", "p(fat)"}
        assert sum(measured.values()) == pytest.approx(1.0, abs=1e-3)

    png = Image.open(out / "class_map.png")
    assert png.mode == "RGB" and png.width > 600  # thumbnail plus legend


def test_zero_shot_label_errors_are_one_line(cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["zero-shot", str(cmu_slide), "--labels", "tumor", "--out", str(tmp_path), *FAST]) == 1
    assert "at least 2 classes" in capsys.readouterr().err
    bad = tmp_path / "classes.json"
    bad.write_text("{not json")
    assert main(["zero-shot", str(cmu_slide), "--labels-file", str(bad), "--out", str(tmp_path), *FAST]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("histoclip zero-shot: error:") and "classes.json: not valid JSON" in err and "\n" not in err


def test_heatmap_png_is_written(cmu_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.png"
    assert main(["heatmap", str(cmu_slide), "glands", "--out", str(out), *FAST]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 300 and img.shape[2] == 3
    # The colour ramp is drawn: its top is yellow-ish, its bottom dark purple.
    assert img[:, -60:, 0].max() > 200 and img[:, -60:, 2].max() > 100


def test_slide_without_mpp_needs_slide_mpp(slides_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tcga = str(slides_dir / "tcga-cr-7395-01a-01-ts1.svs")
    assert main(["embed", tcga, *FAST]) == 1
    err = capsys.readouterr().err
    assert "no microns-per-pixel" in err and "--slide-mpp" in err and "µm/px field" in err
    assert main(["embed", tcga, "--slide-mpp", "0.5", *FAST]) == 0
    assert "tcga-cr-7395-01a-01-ts1.svs:" in capsys.readouterr().out


def test_demo_runs_end_to_end_on_a_local_slide(cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--slide", str(cmu_slide), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("NOTE: model 'test-tiny' has RANDOM weights")
    folder = out / "CMU-1-Small-Region"
    assert {p.name for p in folder.iterdir()} == {"class_map.png", "tiles.csv", "tiles.geojson", "heatmap.png"}


def test_demo_without_weights_fails_with_one_line_naming_the_fix(
    cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert main(["demo", "--slide", str(cmu_slide), "--out", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "wisdomik/QuiltNet-B-32" in err and "--model /path/to/bundle" in err
    assert not (tmp_path / "CMU-1-Small-Region").exists()


def test_caption_prints_the_n_best_with_scores(
    cmu_slide: Path, tiny_captioner: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.support.decoders import TOY_CAPTIONS

    argv = ["caption", str(cmu_slide), "--box", "600,600,800,800", "--captioner", str(tiny_captioner),
            "--beams", "3", "--n-best", "2", *FAST]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:2] in ("1.", "2.")]
    assert len(lines) == 2
    scores = [float(line.rsplit("(score ", 1)[1].rstrip(")")) for line in lines]
    assert scores[0] >= scores[1]
    best = lines[0][3:].rsplit("  (score", 1)[0]
    assert best in TOY_CAPTIONS  # the toy decoder only knows its six sentences


def test_caption_refuses_a_captioner_of_another_clip_model(
    cmu_slide: Path, tiny_captioner: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_captioner, other)
    manifest = json.loads((other / "histoclip.json").read_text())
    manifest["clip_model_id"] = "quiltnet-b32"
    (other / "histoclip.json").write_text(json.dumps(manifest))
    assert main(["caption", str(cmu_slide), "--box", "600,600,800,800", "--captioner", str(other), *FAST]) == 1
    err = capsys.readouterr().err
    assert "quiltnet-b32" in err and "test-tiny" in err


def test_caption_box_must_be_four_numbers(cmu_slide: Path, tiny_captioner: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["caption", str(cmu_slide), "--box", "1,2,3", "--captioner", str(tiny_captioner), *FAST]) == 1
    assert "--box: expected x,y,w,h" in capsys.readouterr().err
