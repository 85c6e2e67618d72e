"""``histoclip --server URL ...`` against a real server: the same numbers as a local run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend import api
from backend.cli import main
from backend.local import LocalBackend
from tests.support.server import TILES, Running

FLAGS = ["--model", "test-tiny", "--mpp", "2", "--tile-size", "64"]


@pytest.fixture()
def token_env(module_server: Running, monkeypatch: pytest.MonkeyPatch) -> Running:
    monkeypatch.setenv("HISTOCLIP_TOKEN", module_server.token)
    return module_server


@pytest.mark.slow
def test_remote_zero_shot_heatmap_index_search(token_env: Running, cmu_slide: Path, tmp_path: Path, capsys) -> None:
    url = token_env.url
    assert main(["--server", url, "zero-shot", cmu_slide.name, "--labels", "tumor;stroma", "--out", str(tmp_path / "z"), *FLAGS]) == 0
    local = LocalBackend(cache_dir=tmp_path / "cache", device="cpu")
    ref = local.zero_shot(api.ZeroShotRequest(api.SlideRef(str(cmu_slide)), "test-tiny", ("tumor", "stroma"), tiles=TILES))
    # The local command's files (issue 20), from the server's numbers: one row per tissue tile.
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["class_map.png", "tiles.csv", "tiles.geojson"]
    table = pd.read_csv(tmp_path / "z" / "tiles.csv")
    cells = np.argwhere(ref.class_map > 0)
    assert table[["row", "col"]].to_numpy().tolist() == cells.tolist()
    assert list(table["class"]) == [ref.labels[v - 1] for v in ref.class_map[cells[:, 0], cells[:, 1]]]
    np.testing.assert_array_equal(table["p_stroma"].to_numpy(np.float32), ref.probabilities[1][cells[:, 0], cells[:, 1]])
    assert len(json.loads((tmp_path / "z" / "tiles.geojson").read_text())["features"]) == len(cells)
    out = tmp_path / "h.png"
    assert main(["--server", url, "heatmap", cmu_slide.name, "stroma", "--out", str(out), *FLAGS]) == 0
    from PIL import Image

    assert Image.open(out).size[0] > 100
    assert main(["--server", url, "index", cmu_slide.name, "test3-DAPI-2-(387).ndpi", "--out", "cli-cohort", *FLAGS]) == 0
    assert "cli-cohort: 2 slides" in capsys.readouterr().out
    assert main(["--server", url, "search", "cli-cohort", "--text", "tumor", "-k", "3", *FLAGS]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["RANK", "SCORE", "SLIDE", "BOX", "x,y,w,h", "TILES"] and 2 <= len(table) <= 4
    assert {row.split()[2] for row in table[1:]} <= {cmu_slide.name, "test3-DAPI-2-(387).ndpi"}


def test_remote_cli_errors_are_one_line(module_server: Running, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("HISTOCLIP_TOKEN", "wrong")
    assert main(["--server", module_server.url, "search", "x", "--text", "t", "--model", "test-tiny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("histoclip search: error: ") and "refused the token (401)" in err and "wrong" not in err
    monkeypatch.setenv("HISTOCLIP_TOKEN", module_server.token)
    assert main(["--server", module_server.url, "zero-shot", "nope.svs", "--labels", "a;b", "--out", "/nonexistent", *FLAGS]) == 1
    assert "nope.svs: no slide of that id or name on this server" in capsys.readouterr().err
    assert main(["--server", module_server.url, "demo"]) == 1
    assert "'demo' runs only on this computer" in capsys.readouterr().err
