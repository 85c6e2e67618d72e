"""``histoclip info`` and ``histoclip models``, run in-process through ``main(argv)``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.cli import main


def test_info_prints_levels_mpp_and_tissue_for_every_slide(slides_dir: Path, capsys: pytest.CaptureFixture) -> None:
    slides = sorted(slides_dir.iterdir())
    assert main(["info", *map(str, slides)]) == 0
    out = capsys.readouterr().out
    blocks = {b.split(":", 1)[0]: b for b in re.split(r"\n(?=\S)", out.strip())}
    assert set(blocks) == {p.name for p in slides}
    cmu = blocks["CMU-1-Small-Region.svs"]
    assert "2220 x 2967 px" in cmu and "mpp 0.499 µm/px (metadata)" in cmu and "20x" in cmu
    assert "associated images: label, macro, thumbnail" in cmu
    assert float(re.search(r"tissue: ([\d.]+) %", cmu).group(1)) == pytest.approx(34.4, abs=3)
    ndpi = blocks["test3-DAPI-2-(387).ndpi"]
    assert "mpp 0.2282" in ndpi and "40x" in ndpi and "level 6: 62 x 76 px, downsample 64" in ndpi
    tcga = blocks["tcga-cr-7395-01a-01-ts1.svs"]
    assert "mpp unknown (not in the metadata; pass --slide-mpp)" in tcga
    assert "level 1: 2221 x 1783 px" in tcga
    for block in blocks.values():
        assert re.search(r"tissue: [\d.]+ % of the slide", block)


def test_info_takes_a_user_mpp_and_says_so(slides_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--slide-mpp", "0.25", str(slides_dir / "tcga-cr-7395-01a-01-ts1.svs")]) == 0
    assert "mpp 0.25 µm/px (user)" in capsys.readouterr().out


EXPECTED_BAD = {
    "broken.svs": "not a slide or image format we can read",
    "unopenable.tiff": "unsupported TIFF compression 52479",
    "unreadable.svs": "Bogus marker length",
}


def test_info_gives_one_clean_line_per_bad_file_and_goes_on(
    testdata: Path, cmu_slide: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = sorted((testdata / "bad").iterdir())
    assert {p.name for p in bad} == set(EXPECTED_BAD)
    assert main(["info", *map(str, bad), str(cmu_slide)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(bad)  # one line each, no traceback
    for path, line in zip(bad, lines):
        assert line.startswith(f"histoclip info: error: {path.name}: ")
        assert EXPECTED_BAD[path.name] in line
    assert "Traceback" not in captured.err
    assert captured.out.startswith("CMU-1-Small-Region.svs:")  # the good slide still reported


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tmp_path / "nope.svs")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("histoclip info: error: nope.svs:") and "\n" not in err


def test_models_lists_the_registry_and_flags_random_weights(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith("Also")}
    assert {"quiltnet-b32", "quiltnet-b16", "quiltnet-b16-pmb", "plip", "biomedclip", "test-tiny"} <= set(rows)
    assert "hf-hub:wisdomik/QuiltNet-B-32" in rows["quiltnet-b32"] and "512" in rows["quiltnet-b32"]
    assert "RANDOM" in rows["test-tiny"] and "RANDOM" not in rows["quiltnet-b32"]
