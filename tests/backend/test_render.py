"""Files for users: hit GeoJSON per slide, heatmap PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.api import GridGeometry, SearchHit
from backend.errors import InputError
from backend.tasks.render import colorize, write_heatmap_png, write_hits_geojson


def test_hits_geojson_one_file_per_slide_even_with_equal_names(tmp_path: Path) -> None:
    hits = [
        SearchHit("a.svs", "/cohort1/a.svs", (10, 20, 30, 40), 0.9, 2),
        SearchHit("a.svs", "/cohort2/a.svs", (0, 0, 5, 5), 0.8, 1),
        SearchHit("a.svs", "/cohort1/a.svs", (100, 100, 10, 10), 0.7, 1),
    ]
    paths = write_hits_geojson(hits, tmp_path)
    assert len(paths) == 2 and len({p.name for p in paths}) == 2
    first = json.loads(paths[0].read_text())
    names = [f["properties"]["name"] for f in first["features"]]
    assert names == ["hit 1 (score 0.900)", "hit 3 (score 0.700)"]
    ring = first["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == [10.0, 20.0] and ring[2] == [40.0, 60.0] and ring[-1] == ring[0]


def test_colorize_marks_nan_transparent_and_orders_the_ramp() -> None:
    rgba = colorize(np.array([[0.0, 1.0, np.nan]]), 0.0, 1.0)
    assert rgba[0, 2, 3] == 0 and rgba[0, 0, 3] == 255
    assert rgba[0, 1, :3].sum() > rgba[0, 0, :3].sum()  # high similarity is brighter


def test_heatmap_png_places_cells_on_the_thumbnail(tmp_path: Path) -> None:
    thumb = np.full((100, 100, 3), 255, np.uint8)
    sim = np.full((2, 2), np.nan, np.float32)
    sim[0, 0] = 1.0  # only the top-left cell has a value
    geometry = GridGeometry(shape=(2, 2), scale=(500.0, 500.0), translate=(249.5, 249.5))
    out = write_heatmap_png(sim, geometry, tmp_path / "h.png", thumbnail=thumb, slide_dimensions=(1000, 1000))
    img = np.asarray(Image.open(out))
    assert img.shape[1] > 100  # thumbnail plus colour bar
    assert (img[10, 10] != 255).any()  # the top-left quarter is coloured
    assert (img[75, 75] == 255).all()  # the NaN cells leave the slide as it is
    with pytest.raises(InputError, match="does not match its grid"):
        write_heatmap_png(sim, GridGeometry((3, 3), (1, 1), (0, 0)), tmp_path / "x.png", thumbnail=thumb, slide_dimensions=(10, 10))
