"""``histoclip classify`` as a user runs it: a subprocess, on CMU-1-Small-Region, twice."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.cli import main

pytestmark = pytest.mark.slow  # two histoclip processes (~6 s of imports each)

TILES = api.TileOptions(tile_size=64, mpp=2.0)
CLASSES = ("tumor", "stroma", "fat")

# Run histoclip with tile reading made fatal: what a second, cached run must never need.
NO_TILES = """
import sys
import backend.slides, backend.slides.tiling

def no_tiles(*args, **kwargs):
    raise SystemExit("histoclip read a tile")

backend.slides.read_tiles = backend.slides.tiling.read_tiles = no_tiles
from backend.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def bundle(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier saved from a few marks on CMU (64 px tiles at 2 µm/px), in-process."""
    from backend.local import LocalBackend

    folder = tmp_path_factory.mktemp("classify-cli")
    backend = LocalBackend(cache_dir=folder / "build-cache", device="cpu")
    slide = api.SlideRef(str(cmu_slide))
    zs = backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", CLASSES, tiles=TILES))
    cells = [tuple(int(v) for v in rc) for rc in np.argwhere(zs.class_map > 0)]
    marks = tuple(api.TileMarks(name, tuple(cells[i::3][:3])) for i, name in enumerate(CLASSES))
    info = backend.save_classifier(api.SaveClassifierRequest(
        str(folder / "cmu-classifier"), (api.SlideMarks(slide, marks),), model="test-tiny", labels=CLASSES, tiles=TILES))
    return Path(info.path)


def _run(args: list[str], cache: Path, *, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HISTOCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "backend.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("source", ["registry", "bundle"])
def test_classify_writes_zero_shot_files_and_a_cached_run_reads_no_tile(cmu_slide: Path, bundle: Path, tmp_path: Path,
                                                                         source: str, capsys, monkeypatch) -> None:
    """Both backbone sources: the registry model unchanged (the saved refine head), and the
    classifier's own image-only backbone (a CLIP-IT student: cached under its own model id).
    Each first run is in-process (``main``, the same code path, without a process's 6 s of
    imports); each second run is a process of its own, as a user runs it, that finds the
    first run's embeddings on disk."""
    name = "cmu-classifier"
    if source == "bundle":
        from dataclasses import replace

        from backend.models import load_model
        from backend.models.classifier import load_classifier, save_classifier

        name = "student"
        bundle = save_classifier(replace(load_classifier(bundle), name=name), tmp_path / name,
                                 backbone=load_model("test-tiny", device="cpu"))
        assert (bundle / "backbone").is_dir()
    cache = tmp_path / "cache"
    args = ["classify", str(cmu_slide), "--classifier", str(bundle), "--device", "cpu"]
    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(cache))
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    stdout = capsys.readouterr().out
    assert "RANDOM weights" in stdout and f"34 tiles classified by {name!r}" in stdout
    out = tmp_path / "first"
    assert {p.name for p in out.iterdir()} == {"class_map.png", "tiles.csv", "tiles.geojson"}  # as zero-shot's
    rows = _rows(out / "tiles.csv")
    assert len(rows) == 34 and {r["class"] for r in rows} <= set(CLASSES)
    assert sorted(c for c in rows[0] if c.startswith("p_")) == sorted(f"p_{c}" for c in CLASSES)
    doc = json.loads((out / "tiles.geojson").read_text())
    assert {f["properties"]["classification"]["name"] for f in doc["features"]} <= set(CLASSES)

    # Second run, tile reading made fatal: served from the cache, same table.
    second = _run([*args, "--out", str(tmp_path / "second")], cache, code=NO_TILES)
    assert second.returncode == 0, second.stderr
    assert _rows(tmp_path / "second" / "tiles.csv") == rows


def test_the_no_tile_guard_catches_an_uncached_run(cmu_slide: Path, bundle: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch NO_TILES makes does stop a run that needs tiles (so the test above can fail)."""
    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(tmp_path / "empty-cache"))
    namespace: dict = {"__name__": "guard"}
    # Only the guard's definition: its patch line would outlive this test (monkeypatch below
    # would then "restore" the guard, and every later test in the session would read no tile).
    exec(NO_TILES.split("backend.slides.read_tiles =")[0], namespace)
    import backend.slides
    import backend.slides.tiling

    monkeypatch.setattr(backend.slides, "read_tiles", namespace["no_tiles"])
    monkeypatch.setattr(backend.slides.tiling, "read_tiles", namespace["no_tiles"])
    with pytest.raises(SystemExit, match="histoclip read a tile"):
        main(["classify", str(cmu_slide), "--classifier", str(bundle), "--device", "cpu", "--out", str(tmp_path / "o")])


def test_classify_errors_are_one_line(cmu_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["classify", str(cmu_slide), "--classifier", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert "histoclip classify: error: classifier bundle" in capsys.readouterr().err
