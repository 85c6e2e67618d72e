"""The typed record of a layer's metadata: round trips, the key names old sessions saved, and
the keys it does not know left alone. No Qt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from napari_histoclip._layer_meta import (
    LayerKind,
    LayerRecord,
    is_ours,
    layer_record,
    slide_class_map,
    update_record,
    with_record,
)
from napari_histoclip._slide import SlideInfo

SLIDE = SlideInfo("/slides/CMU-1.svs", "CMU-1.svs", 2220, 2967, 0.499)

#: A class map's metadata as the plugin wrote it before the record existed (an old session).
OLD_CLASS_MAP = {
    "histoclip": {"path": "/slides/CMU-1.svs", "name": "CMU-1.svs", "width": 2220, "height": 2967,
                  "mpp": 0.499, "world_units": ""},
    "labels": ["tumor", "stroma"],
    "colors": ["#ff0000", "#00ff00"],
    "legend": [{"value": 1, "label": "tumor", "color": "#ff0000", "fraction": 0.5}],
    "kind": "class_map",
    "region": False,
    "classifier": "/bundles/student",
    "marks_only": True,
}


@dataclass
class Layer:
    """What the record reads of a napari layer: its metadata (assigned whole, as napari's)."""

    metadata: dict[str, Any] = field(default_factory=dict)


def test_old_keys_load_into_the_record() -> None:
    record = LayerRecord.from_metadata(OLD_CLASS_MAP)
    assert record == LayerRecord(slide=SLIDE, kind=LayerKind.CLASS_MAP, labels=("tumor", "stroma"),
                                 colors=("#ff0000", "#00ff00"), classifier="/bundles/student", marks_only=True)
    assert record.to_metadata(OLD_CLASS_MAP) == OLD_CLASS_MAP  # written back: the same keys and values


@pytest.mark.parametrize("record", [
    LayerRecord(),
    LayerRecord(slide=SLIDE, kind=LayerKind.HEATMAP),
    LayerRecord(slide=SLIDE, kind=LayerKind.CLASS_MAP, labels=("a",), colors=("#010203",), region=True),
    LayerRecord(slide=SlideInfo("/s.tif", "s.tif", 10, 20, None, "um"), mpp_source="user",
                class_colors={"tumor": "#ff0000"}),
])
def test_round_trip(record: LayerRecord) -> None:
    meta = record.to_metadata()
    assert LayerRecord.from_metadata(meta) == record
    assert all(isinstance(v, (str, bool, list, dict)) for v in meta.values())  # plain values survive saving


def test_defaults_remove_their_keys_and_unknown_keys_stay() -> None:
    meta = with_record(OLD_CLASS_MAP, classifier=None, marks_only=False)
    assert "classifier" not in meta and "marks_only" not in meta
    assert meta["legend"] == OLD_CLASS_MAP["legend"] and meta["region"] is False  # an empty value stays
    assert LayerRecord().to_metadata({"level_downsamples": [1.0, 4.0]}) == {"level_downsamples": [1.0, 4.0]}
    # a class map names its classes, none at first (a map started from marks alone)
    assert LayerRecord(kind=LayerKind.CLASS_MAP).to_metadata() == {"kind": "class_map", "labels": [], "colors": []}


def test_a_slide_entry_keeps_keys_it_does_not_know() -> None:
    base = {"histoclip": {**OLD_CLASS_MAP["histoclip"], "added_later": 1}}
    meta = with_record(base, slide=SlideInfo("/slides/CMU-1.svs", "CMU-1.svs", 2220, 2967, 0.25))
    assert meta["histoclip"]["mpp"] == 0.25 and meta["histoclip"]["added_later"] == 1


def test_malformed_values_read_as_defaults() -> None:
    record = LayerRecord.from_metadata({"kind": "no-such-kind", "labels": None, "class_colors": ["x"],
                                        "histoclip": {"name": "no path"}})
    assert record == LayerRecord()
    assert layer_record(object()) == LayerRecord()  # not a layer at all


def test_update_record_assigns_the_layers_metadata() -> None:
    layer = Layer(dict(OLD_CLASS_MAP))
    record = update_record(layer, labels=("tumor", "stroma", "fat"), colors=("#ff0000", "#00ff00", "#0000ff"))
    assert record.labels == ("tumor", "stroma", "fat") and layer.metadata["labels"] == ["tumor", "stroma", "fat"]
    assert layer.metadata["colors"][-1] == "#0000ff" and layer.metadata["legend"] == OLD_CLASS_MAP["legend"]


def test_ours_and_the_slides_class_map() -> None:
    region_map = Layer(with_record(OLD_CLASS_MAP, region=True))
    whole = Layer(dict(OLD_CLASS_MAP))
    other = Layer(with_record(OLD_CLASS_MAP, slide=SlideInfo("/slides/other.svs", "other.svs", 1, 1)))
    no_slide = Layer({"kind": "class_map"})  # a kind without our slide entry is not ours
    layers = [region_map, no_slide, other, whole]
    assert is_ours(whole, LayerKind.CLASS_MAP) and is_ours(whole, "class_map") and not is_ours(no_slide, "class_map")
    assert slide_class_map(layers, SLIDE.path) is whole
    assert slide_class_map(layers, "/slides/other.svs") is other
    assert slide_class_map(layers[:2], SLIDE.path) is None
