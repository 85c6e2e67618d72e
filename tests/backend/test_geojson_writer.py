"""The one QuPath GeoJSON writer (backend.tasks.geojson) and the atomic writer's file mode."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from backend.atomic import atomic_path
from backend.errors import InputError
from backend.tasks.geojson import QuPathObject, class_color, write_qupath_geojson


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_files_follow_the_umask_even_when_the_writer_made_them_private(tmp_path: Path, umask: int) -> None:
    with atomic_path(tmp_path / "a.bin") as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # as tempfile.mkstemp does
        os.write(fd, b"x")
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask


def test_geojson_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    out = write_qupath_geojson(tmp_path / "a.geojson", [QuPathObject.box(0, 0, 10, 10)])
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_a_missing_folder_is_an_error_and_is_not_made(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"folder .*nope does not exist"):
        write_qupath_geojson(tmp_path / "nope" / "a.geojson", [])
    assert not (tmp_path / "nope").exists()


def test_one_colour_per_class_in_a_file(tmp_path: Path) -> None:
    objects = [
        QuPathObject.box(0, 0, 5, 5, classification="tumor"),  # no colour of its own
        QuPathObject.box(5, 5, 5, 5, classification="tumor", color=(1, 2, 3)),
        QuPathObject.box(9, 9, 5, 5, classification="stroma", color=(4, 5, 6)),
    ]
    doc = json.loads(write_qupath_geojson(tmp_path / "a.geojson", objects, known_colors={"tumor": "#ff0000"}).read_text())
    got = [f["properties"]["classification"]["color"] for f in doc["features"]]
    assert got == [[255, 0, 0], [255, 0, 0], [4, 5, 6]]


def test_a_class_without_a_known_colour_gets_the_same_one_everywhere() -> None:
    import subprocess
    import sys

    code = "from backend.tasks.geojson import class_color; print(class_color('Tumor'))"
    runs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": s},
                           capture_output=True, text=True, check=True).stdout for s in ("1", "2")}
    assert runs == {f"{class_color('Tumor')}\n"}
    assert class_color("Tumor", {"Tumor": "#010203"}) == (1, 2, 3)


def test_polygons_keep_their_holes(tmp_path: Path) -> None:
    outer = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    hole = np.array([[4, 4], [6, 4], [6, 6], [4, 6]], float)
    doc = json.loads(write_qupath_geojson(tmp_path / "h.geojson", [QuPathObject(((outer, hole),))]).read_text())
    (feature,) = doc["features"]
    assert feature["geometry"]["type"] == "Polygon" and len(feature["geometry"]["coordinates"]) == 2
    assert feature["geometry"]["coordinates"][1][0] == feature["geometry"]["coordinates"][1][-1]  # closed


def test_the_cli_exports_go_through_the_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tile and hit exports reach the same writer as the dock (no twin left in the backend)."""
    import backend.tasks.geojson as geojson
    from backend.api import SearchHit
    from backend.tasks.render import write_hits_geojson

    seen = []
    real = geojson.write_qupath_geojson
    monkeypatch.setattr(geojson, "write_qupath_geojson", lambda *a, **k: seen.append(a[0]) or real(*a, **k))
    write_hits_geojson([SearchHit("a.svs", "/c/a.svs", (1, 2, 3, 4), 0.5, 1)], tmp_path)
    assert seen == [tmp_path / "a.hits.geojson"]
