"""The CLI's flags refuse the tile sizes, resolutions and limits the library refuses (issue 21,
server item 1): one line naming the flag and the limits, exit 1, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import main

MODEL = ["--model", "test-tiny", "--device", "cpu"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--mpp", "4e-9", "--tile-size", "224"], "--mpp: 4e-09 µm/px is outside the limits 0.01-1000"),
    (["--mpp", "-1", "--tile-size", "224"], "--mpp: -1.0 µm/px is outside the limits 0.01-1000"),
    (["--mpp", "0.5", "--tile-size", "100000"], "--tile-size: 100000 pixels is outside the limits 8-4096"),
    (["--mpp", "0.5", "--tile-size", "4"], "--tile-size: 4 pixels is outside the limits 8-4096"),
    (["--mpp", "0.5", "--slide-mpp", "1e-9"], "--slide-mpp: 1e-09 µm/px is outside the limits"),
])
def test_zero_shot_refuses_tiles_out_of_bounds(cmu_slide: Path, tmp_path: Path, capsys, flags: list[str],
                                               message: str) -> None:
    code = main(["zero-shot", str(cmu_slide), "--labels", "a;b", "--out", str(tmp_path / "out"), *MODEL, *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("histoclip zero-shot: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_too_many_classes_name_the_limit(cmu_slide: Path, tmp_path: Path, capsys) -> None:
    labels = ";".join(f"class {i}" for i in range(300))
    code = main(["zero-shot", str(cmu_slide), "--labels", labels, "--out", str(tmp_path / "o"), *MODEL])
    err = capsys.readouterr().err
    assert code == 1 and "300 classes is over the limit of 256 classes per call" in err, err


def test_level0_tiles_stay_allowed() -> None:
    """``--mpp 0`` still means level-0 pixels (not an mpp of 0)."""
    from argparse import Namespace

    from backend.cli.slide_tasks import tile_options

    assert tile_options(Namespace(tile_size=64, mpp=0.0)).mpp is None
    assert tile_options(Namespace(tile_size=64, mpp=2.0)).mpp == 2.0


def test_serve_max_tiles_is_checked(tmp_path: Path, capsys) -> None:
    code = main(["serve", "--max-tiles", "5000000", "--state-dir", str(tmp_path)])
    assert code == 1 and "--max-tiles: between 1 and 4,000,000 tiles" in capsys.readouterr().err
    from backend.cli import build_parser
    from backend.cli.serve import config_from_args

    args = build_parser().parse_args(["serve", "--max-tiles", "1000", "--state-dir", str(tmp_path)])
    assert config_from_args(args).limits.max_tiles == 1000
    for flag in ("--max-body-bytes", "--max-jobs-per-token", "--batch-size"):
        assert main(["serve", flag, "0", "--state-dir", str(tmp_path)]) == 1
        assert f"{flag}: at least 1, got 0" in capsys.readouterr().err


def test_classify_overrides_are_checked_alike() -> None:
    """``histoclip classify --mpp/--tile-size`` override a classifier's tiles through the same check."""
    from argparse import Namespace

    from backend.api import TileOptions
    from backend.cli.classifiers import _tiles
    from backend.errors import InputError

    recorded = {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}
    with pytest.raises(InputError, match="--mpp: 4e-09 µm/px is outside the limits"):
        _tiles(Namespace(tile_size=None, mpp=4e-9), recorded)
    with pytest.raises(InputError, match="--tile-size: 100000 pixels is outside the limits 8-4096"):
        _tiles(Namespace(tile_size=100_000, mpp=None), recorded)
    assert _tiles(Namespace(tile_size=None, mpp=0.0), recorded).mpp is None  # 0: level-0 pixels
    assert _tiles(Namespace(tile_size=None, mpp=None), recorded) is None  # the backend takes the classifier's
    # A server's classifier is not read here: one flag alone cannot be completed from it.
    with pytest.raises(InputError, match="--server classify: give both --mpp and --tile-size, or neither"):
        _tiles(Namespace(tile_size=64, mpp=None), None)
    assert _tiles(Namespace(tile_size=64, mpp=2.0), None) == TileOptions(tile_size=64, mpp=2.0)
