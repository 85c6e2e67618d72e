"""``histoclip index`` and ``histoclip search``, run in-process through ``backend.cli.main``.

The cohort: three generated tissue slides (a 2x2-tile patch planted at tile-aligned offsets
into ``gen-0`` and ``gen-1``) and kidney-48-5.tif, which has no mpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from backend.cli import main
from backend.index import CohortIndex
from tests.support import cohort_data as cd
from tests.support.cli_run import run_main

TS = 224
MODEL_FLAGS = ["--model", "test-tiny", "--mpp", str(cd.MPP), "--tile-size", str(TS)]
PLANT_AT = {"gen-0.tif": (TS, 2 * TS), "gen-1.tif": (4 * TS, TS)}
NO_MPP = "kidney-48-5.tif"


def run(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``histoclip ARGV`` (the progress bar goes to stderr)."""
    return run_main(main, argv)


@dataclass(frozen=True)
class Built:
    gen_dir: Path
    index: Path
    planted: dict[str, tuple[int, int, int, int]]
    code: int
    out: str
    err: str

    def box_flag(self) -> str:
        return ",".join(map(str, self.planted["gen-0.tif"]))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, testdata: Path, slides_dir: Path) -> Built:
    root = tmp_path_factory.mktemp("cli-cohort")
    gen = root / "slides"
    _, planted = cd.make_cohort(testdata, gen, 3, (1536, 1536), seed=200, tile=TS,
                                patch=cd.patch_from(testdata, 2 * TS), plant_at=PLANT_AT)
    index = root / "index"
    code, out, err = run(["index", str(gen), str(slides_dir / NO_MPP), "--out", str(index), *MODEL_FLAGS])
    return Built(gen, index, planted, code, out, err)


def _table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["RANK", "SCORE", "SLIDE", "BOX", "x,y,w,h", "TILES"]
    rows = []
    for line in lines[1:]:
        if line.startswith("wrote "):
            break
        rows.append(line.split())
    return rows


def test_index_reports_the_slide_without_mpp_and_indexes_the_rest(built: Built) -> None:
    assert built.code == 1  # not everything was indexed
    skipped = [ln for ln in built.err.splitlines() if ln.startswith("histoclip index: skipped")]
    assert len(skipped) == 1 and NO_MPP in skipped[0] and "no microns-per-pixel" in skipped[0]
    assert "--slide-mpp" in skipped[0]  # the message says how to fix it
    with CohortIndex.open(built.index, read_only=True) as index:
        n_tiles = len(index)
        assert sorted(s.slide_name for s in index.slides()) == ["gen-0.tif", "gen-1.tif", "gen-2.tif"]
    assert built.out.strip() == f"{built.index}: 3 slides, {n_tiles} tiles (test-tiny)"


def test_region_search_prints_table_contact_sheet_and_geojson(built: Built, tmp_path: Path) -> None:
    sheet, gj = tmp_path / "hits.png", tmp_path / "geojson"
    code, out, err = run(["search", str(built.index), "--slide", str(built.gen_dir / "gen-0.tif"),
                          "--box", built.box_flag(), "-k", "4", "--contact-sheet", str(sheet),
                          "--geojson-dir", str(gj), *MODEL_FLAGS])
    assert code == 0, err
    rows = _table(out)
    assert len(rows) >= 2 and [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # the planted copy comes first, with the query's own slide left out
    top_box = tuple(float(v) for v in rows[0][3].split(","))
    assert rows[0][2] == "gen-1.tif" and scores[0] == pytest.approx(1.0, abs=2e-3)
    assert cd.overlap(top_box, built.planted["gen-1.tif"]) == 1.0
    assert "gen-0.tif" not in {r[2] for r in rows}

    from PIL import Image

    assert f"wrote {sheet}" in out
    with Image.open(sheet) as im:
        columns = min(5, len(rows))  # up to 5 cells a row, no empty columns
        assert im.format == "PNG" and im.size == (columns * 192, -(-len(rows) // columns) * (192 + 34))
        cell = im.convert("RGB").crop((2, 2, 190, 190))
        assert len(np.unique(np.asarray(cell).reshape(-1, 3), axis=0)) > 100  # a tissue thumbnail, not an empty cell

    files = sorted(gj.glob("*.hits.geojson"))
    assert {f.name for f in files} == {f"{Path(r[2]).stem}.hits.geojson" for r in rows}
    assert all(f"wrote {f}" in out for f in files)
    features = json.loads((gj / "gen-1.hits.geojson").read_text())["features"]
    ranks = {f["properties"]["measurements"]["rank"]: f for f in features}
    first = ranks[1]
    x, y, w, h = top_box
    assert first["geometry"]["coordinates"][0] == [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    assert first["properties"]["measurements"]["score"] == pytest.approx(scores[0], abs=1e-3)


def test_text_search_prints_ranked_hits(built: Built) -> None:
    code, out, err = run(["search", str(built.index), "--text", "tumor cells with large nuclei", "-k", "3",
                          *MODEL_FLAGS])
    assert code == 0, err
    rows = _table(out)
    scores = [float(r[1]) for r in rows]
    assert len(rows) == 3 and scores == sorted(scores, reverse=True)
    assert {r[2] for r in rows} <= {"gen-0.tif", "gen-1.tif", "gen-2.tif"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--box", "0,0,448,448"], "--box needs --slide: the slide the region is on"),
        (["--text", "tumor", "--slide", "S", "--box", "0,0,448,448"], "give either --text QUERY or --slide"),
        (["--slide", "S"], "give either --text QUERY or --slide"),
        (["--text", "tumor", "-k", "0"], "-k: the number of hits must be at least 1, got 0"),
        (["--slide", "S", "--box", "1,2,3"], "--box: expected x,y,w,h in level-0 pixels, got '1,2,3'"),
    ],
)
def test_bad_search_flags_are_one_line_errors(built: Built, argv: list[str], message: str) -> None:
    code, out, err = run(["search", str(built.index), *argv, *MODEL_FLAGS])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("histoclip search: error: ") and message in err


def test_search_of_a_missing_index_or_with_other_tiles_fails_clearly(built: Built, tmp_path: Path) -> None:
    code, _, err = run(["search", str(tmp_path / "nowhere"), "--text", "tumor", *MODEL_FLAGS])
    assert code == 1 and err.count("\n") == 1
    assert f"{tmp_path / 'nowhere'}: no cohort index here; build one with: histoclip index" in err
    # A region cut into 128 px tiles would be compared with the index's 224 px ones.
    code, _, err = run(["search", str(built.index), "--slide", str(built.gen_dir / "gen-0.tif"),
                        "--box", built.box_flag(), "--model", "test-tiny", "--tile-size", "128"])
    assert code == 1 and err.count("\n") == 1
    assert "the index's tiles are t224-mpp0.5-o0-mt0.5, the query's would be t128-mpp0.5-o0-mt0.5" in err


def test_bad_index_flags_are_one_line_errors(built: Built, tmp_path: Path) -> None:
    out_dir = str(tmp_path / "i")
    code, _, err = run(["index", str(built.gen_dir), "--out", out_dir, "--workers", "2", *MODEL_FLAGS])
    assert code == 1 and "--ray-address and --workers only apply with --engine ray" in err
    # checked before a Ray cluster is started
    code, _, err = run(["index", str(built.gen_dir), "--out", out_dir, "--engine", "ray", "--workers", "0",
                        *MODEL_FLAGS])
    assert code == 1 and "--workers: must be at least 1, got 0" in err
    missing = tmp_path / "no-such-cohort"
    code, _, err = run(["index", str(built.gen_dir), str(missing), "--out", out_dir, *MODEL_FLAGS])
    assert (code, err) == (1, f"histoclip index: error: {missing}: no such file or folder\n")
    assert not Path(out_dir).exists()  # no empty index left behind for a typo


def test_slide_mpp_fills_in_only_for_slides_without_one(slides_dir: Path, tmp_path: Path) -> None:
    """One --slide-mpp for a cohort: the kidney (no mpp) takes it, the NDPI keeps its own."""
    index = tmp_path / "index"
    ndpi = slides_dir / "test3-DAPI-2-(387).ndpi"
    code, out, err = run(["index", str(slides_dir / NO_MPP), str(ndpi), "--out", str(index), "--slide-mpp", "0.3",
                          *MODEL_FLAGS])
    assert code == 0, err
    with CohortIndex.open(index, read_only=True) as opened:
        keys = {s.slide_name: s.spec_key for s in opened.slides()}
        extents = {s.slide_name: s.tile_extent for s in opened.slides()}
    assert keys[NO_MPP].endswith("@0.3mpp") and keys[ndpi.name].endswith("@0.228175mpp")
    assert extents[NO_MPP] == pytest.approx(TS * 0.5 / 0.3) and extents[ndpi.name] == pytest.approx(TS * 0.5 / 0.228175)


def test_search_takes_the_tile_spec_from_the_index(tmp_path, cmu_slide, capsys) -> None:
    """A region query without --mpp/--tile-size is cut like the index's tiles."""
    from backend.cli import main

    index = tmp_path / "idx"
    fast = ["--model", "test-tiny", "--device", "cpu"]
    assert main(["index", str(cmu_slide), "--out", str(index), "--mpp", "2.0", "--tile-size", "64", *fast]) == 0
    capsys.readouterr()
    argv = ["search", str(index), "--slide", str(cmu_slide), "--box", "600,600,600,600", "--include-query-slide", *fast]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[2] == cmu_slide.name  # its own slide ranks first
    # An explicit spec other than the index's is still refused with both named.
    assert main([*argv, "--mpp", "1.0"]) == 1
    assert "t64-mpp2-o0-mt0.5" in capsys.readouterr().err


def test_tile_spec_key_round_trips() -> None:
    from backend.slides import TileSpec

    for spec in (TileSpec(), TileSpec(64, 2.0), TileSpec(256, None, 16, 0.25)):
        assert TileSpec.from_key(spec.key()) == spec
        assert TileSpec.from_key(spec.key() + "@0.499mpp-alltiles") == spec
