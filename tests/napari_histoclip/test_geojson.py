"""QuPath GeoJSON: shapes and class maps out, annotations back in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Layer

from backend.api import Caption, GridGeometry, ZeroShotResult
from backend.errors import InputError
from backend.geometry import ring_area
from backend.tasks.geojson import mask_polygons, mask_rings, qupath_features, write_qupath_geojson
from napari_histoclip._geojson import annotations_layer, class_map_objects, read_geojson, shapes_objects
from napari_histoclip._layers import class_map_layers
from napari_histoclip._shapes import CLASS, caption_layer_kwargs, set_captions, shape_regions
from napari_histoclip._slide import SlideInfo

INFO = SlideInfo("/slides/a.svs", "a.svs", width=2000, height=1500, mpp=0.25)


def _slide_and_shapes():
    viewer = ViewerModel()
    slide = viewer.add_layer(Layer.create(np.zeros((1500, 2000, 3), np.uint8), INFO.layer_kwargs(rgb=True), "image"))
    shapes = viewer.add_layer(Layer.create([], caption_layer_kwargs(INFO), "shapes"))
    # A box from level-0 corner (100, 50) to (300, 250), and a triangle.
    shapes.add_rectangles(np.array([[49.5, 99.5], [249.5, 299.5]]))
    shapes.add_polygons([np.array([[499.5, 499.5], [499.5, 899.5], [799.5, 699.5]])])
    return viewer, slide, shapes


def test_shapes_become_boxes_and_polygons_in_corner_pixels() -> None:
    _, slide, shapes = _slide_and_shapes()
    box, tri = shape_regions(shapes, slide)
    assert box.kind == "box" and box.bounds == pytest.approx((100, 50, 200, 200))
    assert tri.kind == "polygon" and tri.points[0] == pytest.approx((500, 500))


def test_shapes_round_trip_through_qupath_geojson(tmp_path: Path) -> None:
    viewer, slide, shapes = _slide_and_shapes()
    set_captions(shapes, [0, 1], [Caption(("dense tumour", "tumour"), (-0.1, -0.3)), Caption(("fat",), (-0.2,))])
    feats = shapes.features
    feats.loc[0, CLASS] = "Tumor"
    shapes.features = feats
    out = write_qupath_geojson(tmp_path / "a.geojson", shapes_objects(shapes, slide), known_colors={"Tumor": "#c80000"})
    doc = json.loads(out.read_text())
    first = doc["features"][0]
    assert first["properties"]["name"] == "dense tumour"
    assert first["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert first["properties"]["objectType"] == "annotation"
    assert first["geometry"]["coordinates"][0][0] == [100.0, 50.0]
    assert "classification" not in doc["features"][1]["properties"]

    annotations, skipped = read_geojson(out)
    assert skipped == 0 and [a.name for a in annotations] == ["dense tumour", "fat"]
    back = viewer.add_layer(Layer.create(*annotations_layer(annotations, INFO, "back")))
    assert back.shape_type == ["rectangle", "polygon"]
    for a, b in zip(back.data, shapes.data, strict=True):
        assert np.allclose(sorted(map(tuple, a)), sorted(map(tuple, b)))
    assert list(back.features[CLASS]) == ["Tumor", ""]
    assert back.scale.tolist() == [0.25, 0.25]


def test_qupath_exports_read_as_lists_with_points_skipped(tmp_path: Path) -> None:
    doc = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
        {
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [
                [[[0, 0], [10, 0], [10, 10], [0, 0]]],
                [[[20, 20], [30, 20], [30, 30], [20, 30], [20, 20]], [[22, 22], [24, 22], [24, 24], [22, 22]]],
            ]},
            "properties": {"classification": {"name": "Stroma", "colorRGB": -16711936}, "objectType": "annotation"},
        },
    ]
    path = tmp_path / "qupath.json"
    path.write_text(json.dumps(doc))
    annotations, skipped = read_geojson(path)
    assert skipped == 1 and len(annotations) == 3  # the second polygon's hole is a shape of its own
    assert annotations[0].cls == "Stroma" and annotations[0].color == "#00ff00"
    assert annotations[1].is_box and not annotations[0].is_box
    hole = annotations[2]
    assert hole.hole and hole.name == "hole in Stroma" and hole.cls == "" and not annotations[1].hole


def test_unreadable_geojson_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.geojson: cannot read it as GeoJSON"):
        read_geojson(bad)
    bad.write_text('{"type": "Topology"}')
    with pytest.raises(InputError, match="bad.geojson: not GeoJSON"):
        read_geojson(bad)


def test_mask_tracing_is_exact_with_holes_and_pinches() -> None:
    m = np.ones((5, 5), bool)
    m[2, 2] = False
    (poly,) = mask_polygons(m)
    assert len(poly) == 2 and ring_area(poly[0]) == 25 and ring_area(poly[1]) == -1
    diagonal = np.array([[1, 0], [0, 1]], bool)
    assert sorted(ring_area(r) for r in mask_rings(diagonal)) == [1, 1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((9, 11)) < 0.5
        polys = mask_polygons(m)
        assert sum(sum(ring_area(r) for r in p) for p in polys) == m.sum()


def test_class_map_becomes_one_multipolygon_per_class_on_the_tiles() -> None:
    cm = np.array([[0, 1, 1], [2, 1, 2]], np.int32)
    t = 224.0
    geom = GridGeometry(cm.shape, (t, t), ((t - 1) / 2, (t - 1) / 2))
    res = ZeroShotResult(("tumor", "stroma"), cm, np.zeros((2, 2, 3), np.float32), geom, False)
    viewer = ViewerModel()
    labels = viewer.add_layer(Layer.create(*class_map_layers(res, INFO, ["#ff0000", "#0000ff"])[0]))
    feats = qupath_features(class_map_objects(labels, INFO))
    assert [f["properties"]["name"] for f in feats] == ["tumor", "stroma"]
    tumor = feats[0]
    assert tumor["geometry"]["type"] == "MultiPolygon"
    ring = np.array(tumor["geometry"]["coordinates"][0][0])
    # Tiles (0,1), (0,2), (1,1): an L of three tiles starting at x = 224, y = 0.
    assert ring.min(axis=0).tolist() == [224, 0] and ring.max(axis=0).tolist() == [672, 448]
    assert ring_area(ring[:-1]) == pytest.approx(3 * t * t)
    assert len(feats[1]["geometry"]["coordinates"]) == 2  # two separate stroma tiles
    assert tumor["properties"]["classification"]["color"] == [255, 0, 0]


def test_npe2_writer_writes_a_shapes_layer(tmp_path: Path) -> None:
    from napari_histoclip._writer import write_shapes_geojson

    _, _, shapes = _slide_and_shapes()
    data, attributes, _ = shapes.as_layer_data_tuple()
    (written,) = write_shapes_geojson(str(tmp_path / "s.geojson"), data, attributes)
    doc = json.loads(Path(written).read_text())
    assert doc["features"][0]["geometry"]["coordinates"][0][0] == [100.0, 50.0]


def test_shapes_take_the_majority_class_of_the_tiles_under_them() -> None:
    from napari_histoclip._shapes import majority_classes

    cm = np.array([[1, 1, 2], [1, 2, 2], [0, 0, 2]], np.int32)
    t = 100.0
    res = ZeroShotResult(("tumor", "stroma"), cm, np.zeros((2, 3, 3), np.float32),
                         GridGeometry(cm.shape, (t, t), ((t - 1) / 2, (t - 1) / 2)), False)
    viewer = ViewerModel()
    labels = viewer.add_layer(Layer.create(*class_map_layers(res, INFO, ["#ff0000", "#0000ff"])[0]))
    shapes = viewer.add_layer(Layer.create([], caption_layer_kwargs(INFO), "shapes"))
    shapes.add_rectangles(np.array([[-0.5, -0.5], [199.5, 199.5]]))  # tiles (0,0) (0,1) (1,0) (1,1): 3 tumor
    shapes.add_rectangles(np.array([[110, 210], [130, 230]]))  # inside tile (1, 2) only: stroma
    shapes.add_rectangles(np.array([[210, 10], [290, 90]]))  # background tile
    assert majority_classes(shapes, labels) == ["tumor", "stroma", ""]


def test_a_shape_smaller_than_a_tile_votes_with_the_tiles_it_overlaps() -> None:
    """The backend's rule for the tiles under a region (backend.geometry.tiles_in_region): a
    shape that holds no tile centre takes the tiles it overlaps, tissue ones voting."""
    from napari_histoclip._shapes import majority_classes

    cm = np.array([[1, 1, 2], [1, 2, 2], [0, 0, 2]], np.int32)
    t = 100.0
    res = ZeroShotResult(("tumor", "stroma"), cm, np.zeros((2, 3, 3), np.float32),
                         GridGeometry(cm.shape, (t, t), ((t - 1) / 2, (t - 1) / 2)), False)
    viewer = ViewerModel()
    labels = viewer.add_layer(Layer.create(*class_map_layers(res, INFO, ["#ff0000", "#0000ff"])[0]))
    shapes = viewer.add_layer(Layer.create([], caption_layer_kwargs(INFO), "shapes"))
    # Rows 195-215: mostly over background tile (2, 1), partly over stroma tile (1, 1).
    shapes.add_rectangles(np.array([[195, 140], [215, 160]]))
    shapes.add_ellipses(np.array([[20, 20], [40, 40]]))  # inside tumor tile (0, 0)
    shapes.add_lines(np.array([[20, 20], [180, 180]]))  # a line has no area: no class
    assert majority_classes(shapes, labels) == ["stroma", "tumor", ""]
    assert majority_classes(shapes, labels, [2, 0]) == ["", "stroma"]
