"""``histoclip zero-shot``, ``classify`` and ``heatmap`` write the same files with ``--server`` as
without (issue 20): one command against any ``api.Backend``, over a live server on 127.0.0.1.

Compared: the same file names; PNGs pixel for pixel; the tile tables and GeoJSON after parsing,
exactly (probabilities cross the wire as the float32 ``.npy`` the local backend holds, so no
tolerance is needed; GeoJSON feature ids are fresh UUIDs per write and are left out).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backend.cli import main
from tests.support.cli_run import run_main
from tests.support.server import Running, running_server

pytestmark = pytest.mark.slow  # two backends embed CMU-1-Small-Region with test-tiny (~34 tiles each)
FLAGS = ["--mpp", "2", "--tile-size", "64", "--device", "cpu"]
NAMES = ("tumor", "stroma", "fat")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Iterator[tuple[Running, Path]]:
    """A server whose models folder holds a classifier bundle ``probe`` (a head over test-tiny)."""
    from backend.models import load_model
    from backend.models.classifier import Classifier, save_classifier
    from backend.models.heads import LinearHead

    tmp = tmp_path_factory.mktemp("server")
    tiny = load_model("test-tiny", device="cpu")
    rng = np.random.default_rng(0)
    head = LinearHead(NAMES, ((200, 0, 0), (0, 160, 0), (0, 0, 220)), 20 * rng.normal(size=(3, 32)), rng.normal(size=3))
    (tmp / "models").mkdir()
    spec = {"tile_size": 64, "mpp": 2.0, "min_tissue": 0.5}
    save_classifier(Classifier("probe", head, "test-tiny", str(tiny.model_id), spec, unknown_threshold=0.5),
                    tmp / "models" / "probe")
    with running_server(tmp, (slides_dir,)) as running:
        yield running, tmp / "models" / "probe"


def _both(argv_local: list[str], argv_remote: list[str], url: str) -> tuple[str, str]:
    """Run a command locally and with ``--server``; both succeed; their stdout."""
    code, local, err = run_main(main, argv_local)
    assert code == 0, err
    code, remote, err = run_main(main, ["--server", url, *argv_remote])
    assert code == 0, err
    return local, remote


def _same_png(a: Path, b: Path) -> None:
    pa, pb = np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB"))
    assert pa.shape == pb.shape, (a.name, pa.shape, pb.shape)
    assert np.array_equal(pa, pb), (a.name, f"{int((pa != pb).any(axis=-1).sum())} pixels differ")


def _features(path: Path) -> list[dict]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and doc["features"]
    return [{k: v for k, v in f.items() if k != "id"} for f in doc["features"]]


def _same_class_map_files(local: Path, remote: Path) -> None:
    names = sorted(p.name for p in local.iterdir())
    assert names == ["class_map.png", "tiles.csv", "tiles.geojson"]
    assert sorted(p.name for p in remote.iterdir()) == names
    _same_png(local / "class_map.png", remote / "class_map.png")
    a, b = pd.read_csv(local / "tiles.csv"), pd.read_csv(remote / "tiles.csv")
    assert len(a) > 10
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert _features(local / "tiles.geojson") == _features(remote / "tiles.geojson")


def test_zero_shot_classify_and_heatmap_write_the_same_files_remotely(
        server: tuple[Running, Path], cmu_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running, probe = server
    monkeypatch.setenv("HISTOCLIP_TOKEN", running.token)
    # a cache of this test's own: the session's shared one may already hold CMU from another test,
    # and the server's is fresh (module scope), so both embeds below really encode
    monkeypatch.setenv("HISTOCLIP_CACHE_DIR", str(tmp_path / "local-cache"))
    name = cmu_slide.name  # the server's name of the slide

    # embed first: the same line from either backend (tiles, model id, grid), then the maps from the cache
    local, remote = _both(["embed", str(cmu_slide), "--model", "test-tiny", *FLAGS],
                          ["embed", name, "--model", "test-tiny", *FLAGS], running.url)
    assert local.splitlines()[-1] == remote.splitlines()[-1]
    assert remote.splitlines()[-1].startswith(f"{name}: ") and " tiles embedded (" in remote

    zs = ["--labels", ";".join(NAMES), "--unknown-threshold", "0.34", "--model", "test-tiny", *FLAGS]
    local, remote = _both(["zero-shot", str(cmu_slide), "--out", str(tmp_path / "zl"), *zs],
                          ["zero-shot", name, "--out", str(tmp_path / "zr"), *zs], running.url)
    counts = [line for line in local.splitlines() if line.startswith(name)]
    assert counts and counts == [line for line in remote.splitlines() if line.startswith(name)]
    _same_class_map_files(tmp_path / "zl", tmp_path / "zr")
    assert "unknown" in counts[0]  # the threshold's class is in both legends

    local, remote = _both(["classify", str(cmu_slide), "--classifier", str(probe), "--out", str(tmp_path / "cl"), *FLAGS],
                          ["classify", name, "--classifier", "probe", "--out", str(tmp_path / "cr"), *FLAGS], running.url)
    assert "tiles classified by 'probe'" in local and "tiles classified by 'probe'" in remote
    _same_class_map_files(tmp_path / "cl", tmp_path / "cr")
    rows = pd.read_csv(tmp_path / "cl" / "tiles.csv")
    assert set(rows["class"]) <= {*NAMES, "unknown"}
    with Image.open(tmp_path / "cl" / "class_map.png") as png:  # the bundle's colours, not the palette's
        colours = {tuple(c) for c in np.asarray(png.convert("RGB")).reshape(-1, 3)}
    assert {(200, 0, 0), (0, 160, 0), (0, 0, 220)} <= colours

    hm = ["stroma", "--model", "test-tiny", *FLAGS]
    _both(["heatmap", str(cmu_slide), *hm, "--out", str(tmp_path / "hl.png")],
          ["heatmap", name, *hm, "--out", str(tmp_path / "hr.png")], running.url)
    _same_png(tmp_path / "hl.png", tmp_path / "hr.png")
