"""npe2 writer: a Shapes layer on a slide as QuPath GeoJSON (File > Save Selected Layers)."""

from __future__ import annotations

from typing import Any

from napari_histoclip._slide import SlideInfo, slide_of


class _SlideFrame:
    """Stands in for the slide layer: level-0 napari data scaled by the slide's mpp."""

    def __init__(self, info: SlideInfo) -> None:
        self.scale = info.scale
        self.translate = (0.0, 0.0)


def write_shapes_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Shapes layer's areas, captions and classes as QuPath GeoJSON.

    Shapes on a slide (our layers, which carry the slide in their metadata) are written in the
    slide's level-0 pixels; other shapes in their world coordinates, as pixels.
    """
    from napari.layers import Shapes

    from backend.tasks.geojson import write_qupath_geojson
    from napari_histoclip._geojson import recorded_colors, shapes_objects

    keep = ("shape_type", "features", "scale", "translate", "metadata", "name")
    layer = Shapes(data, **{k: attributes[k] for k in keep if k in attributes})
    info = slide_of(layer) or SlideInfo("", layer.name, 0, 0, None)
    # The class colours the layer recorded: the same ones the dock's export writes.
    written = write_qupath_geojson(path, shapes_objects(layer, _SlideFrame(info)), known_colors=recorded_colors(layer))
    return [str(written)]
