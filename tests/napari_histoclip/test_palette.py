"""One palette (issue 20, issue 21 item 6): the CLI's class_map.png and tiles.geojson give each
class the colour the dock's legend shows it in, for more classes than the first few."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("tumor", "stroma", "fat", "necrosis", "lymphocytes", "mucin", "muscle", "debris", "normal mucosa")
FAST = ["--model", "test-tiny", "--mpp", "2.0", "--tile-size", "64", "--device", "cpu"]


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _every_class_map(n: int):
    """A zero-shot class map (``backend.tasks.zero_shot.classify``, as the api result) whose tiles are each
    class's text vector, plus one tile between two classes that falls below the threshold."""
    from backend.embed import SlideEmbeddings
    from backend.tasks.results import class_map_result
    from backend.tasks.zero_shot import ClassPrompt, classify

    text = np.eye(n, 16, dtype=np.float32)
    between = (text[0] + text[1]) / np.sqrt(2)
    vectors = np.vstack([text, between[None]]).astype(np.float32)
    cells = np.argwhere(np.ones((1, n + 1), bool))
    emb = SlideEmbeddings(slide_fingerprint="f" * 32, slide_name="s.svs", slide_path="/nowhere/s.svs",
                          model_id="m", spec=None, spec_key="t", coords=np.stack([cells[:, 1] * 100, cells[:, 0] * 100], 1),
                          tile_extent=100.0, grid_index=cells, grid_shape=(1, n + 1), vectors=vectors, stride=100.0,
                          origin=(0.0, 0.0), slide_dimensions=((n + 1) * 100, 100))
    cm = classify(emb, text, [ClassPrompt(c) for c in CLASSES], 100.0, unknown_threshold=0.6)
    return class_map_result(cm, random_weights=True)


def test_cli_png_and_geojson_colours_are_the_docks_legend(cmu_slide: Path, tmp_path: Path, capsys) -> None:
    from backend.cli import main
    from backend.tasks.export import write_geojson
    from napari_histoclip._layers import UNKNOWN_COLOR, UNKNOWN_LABEL, default_color, legend

    out = tmp_path / "out"
    assert main(["zero-shot", str(cmu_slide), "--labels", ";".join(CLASSES), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    # The dock: the prompt table gives row i default_color(i); the legend shows those colours.
    docked = {e.label: e.color for e in legend(CLASSES, [default_color(i) for i in range(len(CLASSES))],
                                               np.arange(len(CLASSES) + 2))}
    assert len(docked) == len(CLASSES) + 1 and docked[UNKNOWN_LABEL] == UNKNOWN_COLOR

    # tiles.geojson: the CLI's writer on a class map holding every class and "unknown" (the
    # random test model gives CMU one class), made by the CLI's zero-shot colour rule.
    cm = _every_class_map(len(CLASSES))
    doc = json.loads(write_geojson(cm, tmp_path / "tiles.geojson").read_text())
    written = {f["properties"]["classification"]["name"]: _hex(f["properties"]["classification"]["color"])
               for f in doc["features"]}
    assert set(written) == {*CLASSES, UNKNOWN_LABEL}
    assert written == docked

    png = np.asarray(Image.open(out / "class_map.png").convert("RGB")).reshape(-1, 3)
    in_png = {_hex(c) for c in np.unique(png, axis=0)}
    for name in CLASSES:  # every class has a legend swatch in its full colour
        assert docked[name] in in_png, (name, docked[name])
