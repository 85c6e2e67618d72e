"""The one palette (``backend.palette``): a new class's colour, "unknown"'s one name and colour in
every writer, and colour parsing that names a bad value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.models.heads import LinearHead
from backend.palette import PALETTE, UNKNOWN_COLOR, UNKNOWN_NAME, class_rgb, new_class_rgb, to_hex, to_rgb
from backend.tasks.geojson import QuPathObject, class_color, write_qupath_geojson


def test_a_new_class_takes_its_places_colour_unless_taken() -> None:
    assert new_class_rgb([class_rgb(0), class_rgb(1)]) == class_rgb(2)
    custom = [(200, 10, 10), (10, 200, 10)]  # a bundle's own colours: the new class is still class 2's
    assert new_class_rgb(custom) == class_rgb(2)
    assert new_class_rgb([class_rgb(2), (1, 2, 3)]) == class_rgb(0)  # its own is taken: the first free
    assert new_class_rgb(["#1f77b4"]) == class_rgb(1)  # hex or RGB alike


def test_a_heads_new_classes_follow_the_same_rule() -> None:
    head = LinearHead(("a", "b"), ((200, 10, 10), (10, 200, 10)), np.eye(2, 4), np.zeros(2))
    grown = head.extended(["c", "d"])
    assert grown.colors[:2] == head.colors
    assert grown.colors[2:] == (new_class_rgb(head.colors), new_class_rgb([*head.colors, grown.colors[2]]))
    assert grown.colors[2:] == (class_rgb(2), class_rgb(3))
    empty = LinearHead((), (), np.zeros((0, 4)), np.zeros(0))  # marks alone: classes in marking order
    assert empty.extended(["x", "y"]).colors == (PALETTE[0], PALETTE[1])


def test_unknown_has_one_name_and_colour_in_every_geojson(tmp_path: Path) -> None:
    assert class_color(UNKNOWN_NAME) == UNKNOWN_COLOR  # not a colour from the name's hash
    square = ((np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float),),)
    doc = json.loads(write_qupath_geojson(tmp_path / "s.geojson", [
        QuPathObject(square, classification=UNKNOWN_NAME), QuPathObject(square, classification="tumor")]).read_text())
    colours = {f["properties"]["classification"]["name"]: tuple(f["properties"]["classification"]["color"])
               for f in doc["features"]}
    assert colours[UNKNOWN_NAME] == UNKNOWN_COLOR and colours["tumor"] in PALETTE


def test_colours_parse_and_bad_ones_are_named() -> None:
    assert to_rgb("#D62728") == (214, 39, 40) == to_rgb([214, 39, 40]) and to_hex((214, 39, 40)) == "#d62728"
    for bad in ("#12345", "#12345z"):
        with pytest.raises(InputError, match=f"colour '{bad}': expected #rrggbb"):
            to_rgb(bad)
