"""The pure core: results to layers that line up with the slide (ViewerModel, no GL)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Layer

from backend.api import GridGeometry, HeatmapResult, ZeroShotResult
from napari_histoclip._layers import (
    PALETTE,
    box_view,
    class_map_layers,
    heatmap_layer,
    hit_shapes_layer,
    legend,
)
from napari_histoclip._slide import SlideInfo, box_xywh_to_rectangle, slide_of

T = 224  # tile size, level-0 px
INFO = SlideInfo("/slides/a.svs", "a.svs", width=2220, height=2967, mpp=0.5)


def _result(rows: int = 14, cols: int = 10, n: int = 3) -> ZeroShotResult:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(n), size=(rows, cols)).transpose(2, 0, 1).astype(np.float32)
    cm = (probs.argmax(axis=0) + 1).astype(np.int32)
    cm[0, :] = 0
    probs[:, 0, :] = np.nan
    geom = GridGeometry((rows, cols), (float(T), float(T)), ((T - 1) / 2, (T - 1) / 2))
    return ZeroShotResult(("tumor", "stroma", "fat")[:n], cm, probs, geom, True)


def _viewer_with_slide(info: SlideInfo = INFO) -> tuple[ViewerModel, Layer]:
    viewer = ViewerModel()
    slide = viewer.add_layer(
        Layer.create(np.zeros((info.height, info.width, 3), np.uint8), info.layer_kwargs(name=info.name, rgb=True), "image")
    )
    return viewer, slide


@pytest.mark.parametrize("mpp", [0.5, None])
def test_class_map_cells_sit_on_their_tiles(mpp: float | None) -> None:
    info = SlideInfo(INFO.path, INFO.name, INFO.width, INFO.height, mpp)
    viewer, slide = _viewer_with_slide(info)
    result = _result()
    layers = [viewer.add_layer(Layer.create(*ld)) for ld in class_map_layers(result, info, PALETTE)]
    labels = layers[0]
    assert labels.scale[0] == pytest.approx(T * (mpp or 1.0))
    if mpp:
        assert [str(u) for u in labels.units] == ["micrometer", "micrometer"]
    for r, c in [(0, 0), (3, 7), (13, 9)]:
        # First and last level-0 pixel of tile (r, c), in the slide layer's data coordinates.
        for pix in [(r * T, c * T), (r * T + T - 1, c * T + T - 1)]:
            world = slide.data_to_world(pix)
            for lyr in layers:
                assert tuple(np.round(lyr.world_to_data(world)).astype(int)) == (r, c), lyr.name
    assert slide_of(labels) == info


def test_class_map_layers_colours_legend_and_probabilities() -> None:
    result = _result()
    colors = ["#ff0000", "#00ff00", "#0000ff"]
    labels_data, probs = class_map_layers(result, INFO, colors)
    data, kwargs, kind = labels_data
    assert kind == "labels" and kwargs["name"] == "a: class map"
    assert np.allclose(kwargs["colormap"][1], [1, 0, 0, 1]) and kwargs["colormap"][0][3] == 0
    assert list(kwargs["features"]["class"]) == ["no tissue", "tumor", "stroma", "fat", "unknown"]
    # One probability layer for every class (a layer per class froze the UI): it shows one.
    data, kwargs, kind = probs
    assert kind == "image" and kwargs["name"] == "a: p(tumor)" and not kwargs["visible"]
    assert not np.isnan(data).any() and kwargs["contrast_limits"] == (0.0, 1.0)
    assert np.array_equal(data, np.nan_to_num(result.probabilities[0]))
    meta = kwargs["metadata"]
    assert meta["kind"] == "probability" and meta["label"] == "tumor" and meta["labels"] == ["tumor", "stroma", "fat"]
    assert meta["probabilities"].shape == result.probabilities.shape
    cmap = kwargs["colormap"]
    assert cmap.colors[0][3] == 0 and cmap.colors[-1][3] == 1  # transparent at 0
    assert np.allclose(cmap.colors[-1][:3], [1, 0, 0])
    _, again, _ = class_map_layers(result, INFO, colors, shown="fat")[1]
    assert again["name"] == "a: p(fat)" and np.allclose(again["colormap"].colors[-1][:3], [0, 0, 1])
    rows = legend(result.labels, colors, result.class_map)
    assert sum(r.fraction for r in rows) == pytest.approx(1.0)
    assert [r.label for r in rows] == ["tumor", "stroma", "fat"]


def test_the_probability_layer_switches_class_in_place() -> None:
    from napari_histoclip._layers import show_probability

    viewer, _ = _viewer_with_slide()
    result = _result()
    layer = viewer.add_layer(Layer.create(*class_map_layers(result, INFO, ["#ff0000", "#00ff00", "#0000ff"])[1]))
    show_probability(layer, "stroma")
    assert layer.name == "a: p(stroma)" and layer.metadata["label"] == "stroma"
    assert np.array_equal(layer.data, np.nan_to_num(result.probabilities[1]))
    assert np.allclose(layer.colormap.colors[-1][:3], [0, 1, 0]) and layer.colormap.colors[0][3] == 0
    assert len(viewer.layers) == 2  # switched, not added
    with pytest.raises(ValueError, match=r"'necrosis': not a class of a: p\(stroma\) \(tumor, stroma, fat\)"):
        show_probability(layer, "necrosis")


def test_status_bar_names_the_class_under_the_cursor() -> None:
    viewer, slide = _viewer_with_slide()
    result = _result()
    labels = viewer.add_layer(Layer.create(*class_map_layers(result, INFO, PALETTE)[0]))
    value = int(result.class_map[5, 5])
    world = slide.data_to_world((5 * T + 10, 5 * T + 10))
    status = labels.get_status(world, world=True)["coordinates"]
    assert f"class: {result.labels[value - 1]}" in status


def test_heatmap_is_transparent_off_tissue() -> None:
    sim = np.linspace(-0.2, 0.3, 20, dtype=np.float32).reshape(4, 5)
    sim[0, 0] = np.nan
    res = HeatmapResult("necrosis", sim, GridGeometry((4, 5), (T, T), ((T - 1) / 2,) * 2), False)
    data, kwargs, kind = heatmap_layer(res, INFO)
    lo, hi = kwargs["contrast_limits"]
    assert kind == "image" and kwargs["name"] == "a: 'necrosis'"
    assert data[0, 0] < lo  # NaN -> below range -> the transparent first colour
    assert (data[1:] >= lo).all() and kwargs["colormap"].colors[0][3] == 0
    assert kwargs["scale"] == (T * 0.5, T * 0.5)


def test_hits_and_camera_framing() -> None:
    box = (1000.0, 500.0, 448.0, 224.0)
    data, kwargs, kind = hit_shapes_layer([box], INFO, ["#1 0.90"])
    assert kind == "shapes" and kwargs["scale"] == INFO.scale
    rect = data[0]
    # Corner (x, y) = (1000, 500) is napari data (499.5, 999.5).
    assert rect.min(axis=0).tolist() == [499.5, 999.5] and rect.max(axis=0).tolist() == [723.5, 1447.5]
    center, zoom = box_view(box, INFO, (600, 800), margin=0.0)
    assert center == pytest.approx(((500 + 112 - 0.5) * 0.5, (1000 + 224 - 0.5) * 0.5))
    assert zoom == pytest.approx(min(600 / (224 * 0.5), 800 / (448 * 0.5)))
    assert box_xywh_to_rectangle((0, 0, 1, 1)).tolist() == [[-0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.5, -0.5]]
