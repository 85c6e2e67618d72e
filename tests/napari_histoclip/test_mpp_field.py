"""The dock's µm/px field as a Qt-free core: what it shows for the chosen slide, and what a
typed value means (the widget only wires these to its line edit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from napari_histoclip._layer_meta import LayerRecord
from napari_histoclip._mpp import MppField, mpp_field, typed_mpp
from napari_histoclip._slide import SlideInfo


@dataclass
class Layer:
    metadata: dict[str, Any] = field(default_factory=dict)


def slide(mpp: float | None, source: str | None = None) -> Layer:
    info = SlideInfo("/slides/kidney.tif", "kidney.tif", 1493, 901, mpp)
    return Layer(LayerRecord(slide=info, mpp_source=source).to_metadata())


def test_the_field_follows_the_chosen_slide() -> None:
    assert mpp_field(None) == MppField("", "open a slide", False)
    assert mpp_field(Layer()) == MppField("", "open a slide", False)  # a layer of no slide
    assert mpp_field(slide(0.2527)) == MppField("0.2527", "", False)  # the metadata's: read only
    assert mpp_field(slide(None)) == MppField("", "not in metadata: e.g. 0.25 for 40x", True)
    assert mpp_field(slide(0.125, "user")) == MppField("0.125", "not in metadata: e.g. 0.25 for 40x", True)


def test_a_typed_value_is_checked_against_the_slide() -> None:
    info, value = typed_mpp(slide(None), "0,5")
    assert info.name == "kidney.tif" and value == 0.5
    assert typed_mpp(slide(0.5, "user"), " ")[1] is None  # empty: the user's value is taken back
    with pytest.raises(ValueError, match="open a whole-slide image first"):
        typed_mpp(None, "0.5")
    with pytest.raises(ValueError, match="kidney.tif records 0.25 µm/px in its metadata"):
        typed_mpp(slide(0.25), "0.5")
    with pytest.raises(ValueError, match="'abc' is not a number"):
        typed_mpp(slide(None), "abc")
