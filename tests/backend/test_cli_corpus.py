"""``histoclip caption SLIDE --box ... --corpus FILE [--grounding DIR]`` in-process, test-tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from backend.cli import main

FAST = ["--model", "test-tiny", "--mpp", "2.0", "--tile-size", "64", "--device", "cpu"]
CAPTIONS = ("dense fibrous stroma with lymphocytes", "squamous epithelium", "adipose tissue", "tumour glands")


@pytest.mark.slow
def test_caption_from_a_corpus_with_grounding_overlays(cmu_slide: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    corpus = tmp_path / "captions.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "id": f"c{i}"}) + "\n" for i, t in enumerate(CAPTIONS)))
    out = tmp_path / "grounding"
    assert main(["caption", str(cmu_slide), "--box", "0,0,1600,1600", "--corpus", str(corpus), "--id-column", "id",
                 "--n-best", "2", "--grounding", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line[:2] in ("1.", "2.")]
    assert len(lines) == 2 and all("(score " in line and "; from c" in line for line in lines)
    record = json.loads((out / "grounding.json").read_text())
    best = lines[0][3:].split("  (score")[0]
    assert record["caption"] == best and record["method"] == "similarity"
    assert [m["text"] for m in record["maps"]][0] == best
    for m in record["maps"]:
        png = Image.open(out / m["png"])
        assert png.width > 100 and len(m["top_tiles"]) == 5
    assert "wrote" in printed and str(out) in printed


def test_caption_needs_exactly_one_source(cmu_slide: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["caption", str(cmu_slide), "--box", "0,0,500,500", *FAST]) != 0
    assert "give either --captioner BUNDLE or --corpus FILE (exactly one)" in capsys.readouterr().err


def test_caption_corpus_errors_name_the_file(cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.csv").write_text("body\nstroma\n")
    assert main(["caption", str(cmu_slide), "--box", "0,0,1600,1600", "--corpus", str(tmp_path / "c.csv"), *FAST]) != 0
    assert "c.csv: no column 'text' (columns present: body)" in capsys.readouterr().err
