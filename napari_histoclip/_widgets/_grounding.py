"""Caption grounding in the dock: "Show grounding" for the shown shape's caption.

The backend's :class:`backend.api.GroundingResult` becomes ordinary napari layers on the
slide: one support map per text (the whole caption, then each noun phrase, each in its own
colour) and one Shapes layer outlining the top supporting tiles of each map. Selecting
(clicking) an outlined tile says which text it supports and how much. Pure layer building
(:func:`grounding_layers`) is Qt-free; :class:`GroundingControls` is the thin form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from napari_histoclip._layer_meta import LayerKind, with_record
from napari_histoclip._slide import SlideInfo, box_xywh_to_rectangle, grid_transform
from napari_histoclip._widgets._handler import UserError, handler

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext
    from napari_histoclip._layers import LayerData

CAPTION_MAP_COLOR = "#ffd700"  # the whole caption: gold
PHRASE_COLORS = ("#00e5ff", "#ff4fd8", "#7cff4f", "#ff8c1a", "#8f7bff", "#ff5252", "#40c4aa", "#ffe14f")
GROUNDING = LayerKind.GROUNDING
GROUNDING_TILES = LayerKind.GROUNDING_TILES


def map_colors(n_phrases: int) -> list[str]:
    """The caption map's colour, then one per phrase."""
    return [CAPTION_MAP_COLOR, *(PHRASE_COLORS[j % len(PHRASE_COLORS)] for j in range(n_phrases))]


def _support_colormap(color: str, name: str) -> Any:
    from napari.utils.colormaps import Colormap

    from napari_histoclip._layers import hex_to_rgba

    rgba = hex_to_rgba(color)
    return Colormap(colors=np.array([[0, 0, 0, 0], rgba * [1, 1, 1, 0.15], rgba], dtype=np.float32),
                    controls=np.array([0.0, 0.02, 1.0]), name=name, display_name=name)


def grounding_layers(result: Any, info: SlideInfo) -> list[LayerData]:
    """Layer data of a grounding result: a map image per text and the top tiles' outlines.

    Each map is scaled to [0, 1] over the region's tiles (its least supporting tile at 0, the
    most at 1); tiles off the region are transparent.
    """
    texts = (result.caption, *result.phrases)
    colors = map_colors(len(result.phrases))
    scale, translate = grid_transform(result.geometry.scale, result.geometry.translate, info)
    out: list[LayerData] = []
    for m, (text, color) in enumerate(zip(texts, colors)):
        values = np.asarray(result.maps[m], dtype=np.float32)
        valid = np.isfinite(values)
        lo, hi = (float(values[valid].min()), float(values[valid].max())) if valid.any() else (0.0, 1.0)
        data = np.where(valid, 0.02 + 0.98 * (values - lo) / max(hi - lo, 1e-12), 0.0).astype(np.float32)
        what = "caption" if m == 0 else "phrase"
        kwargs = info.layer_kwargs(
            name=f"{info.stem}: {GROUNDING} {what} '{text}'", scale=scale, translate=translate,
            colormap=_support_colormap(color, f"support of '{text}'"), contrast_limits=(0.0, 1.0),
            opacity=0.6, blending="translucent",
        )
        kwargs["metadata"] = {**with_record(kwargs["metadata"], kind=GROUNDING), "text": text,
                              "method": result.method, "support_range": (lo, hi)}
        out.append((data, kwargs, "image"))
    (sy, sx), (ty, tx) = result.geometry.scale, result.geometry.translate
    rects: list[np.ndarray] = []
    edges: list[str] = []
    feats: dict[str, list[Any]] = {"text": [], "rank": [], "support": [], "cell": []}
    for m, (text, cells) in enumerate(zip(texts, result.top_cells)):
        for rank, (r, c) in enumerate(cells, 1):
            # level-0 corner box of grid cell (r, c): its centre is translate + index * scale
            box = (tx + c * sx - sx / 2 + 0.5, ty + r * sy - sy / 2 + 0.5, sx, sy)
            rects.append(box_xywh_to_rectangle(box))
            edges.append(colors[m])
            feats["text"].append(text)
            feats["rank"].append(rank)
            feats["support"].append(float(result.maps[m][r, c]))
            feats["cell"].append(f"{r},{c}")
    kwargs = info.layer_kwargs(
        name=f"{info.stem}: {GROUNDING} supporting tiles", shape_type="rectangle", edge_color=edges or "white",
        face_color="transparent", edge_width=max(2.0, float(sx) / 16), features=feats, opacity=1.0,
    )
    kwargs["metadata"] = {**with_record(kwargs["metadata"], kind=GROUNDING_TILES), "caption": result.caption}
    out.append((rects, kwargs, "shapes"))
    return out


def describe_tile(layer: Any, index: int) -> str:
    """What a supporting tile (a shape of the tiles layer) supports, for the status line."""
    row = layer.features.iloc[index]
    return f"tile {row['cell']}: #{int(row['rank'])} for '{row['text']}' (support {float(row['support']):+.3f})"


class GroundingControls(Container):
    """"Show grounding" for the Caption tab's shown shape, and the clicked supporting tile.

    ``panel`` is the :class:`~napari_histoclip._widgets._caption.CaptionPanel`; it says which
    shape, caption and captioner a grounding is of (:meth:`CaptionPanel.grounding_request`).
    """

    def __init__(self, ctx: DockContext, panel: Any) -> None:
        self.ctx = ctx
        self.panel = panel
        self.button = PushButton(text="Show grounding",
                                 tooltip="map how much each tile of the shape supports its caption and each noun phrase")
        self.tile = Label(value="")
        super().__init__(widgets=[self.button, self.tile], labels=False)
        self.button.changed.connect(self.ground)
        self._tiles_layer: Any = None

    @handler
    def ground(self) -> None:
        """Ground the shown shape's caption in a worker; add its maps and outlined top tiles."""
        from napari_histoclip._layer_meta import is_ours
        from napari_histoclip._viewer import replace_layers

        request, info = self.panel.grounding_request()
        backend = self.ctx.backend

        def done(result: Any) -> None:
            self.ctx.warn_random(result, request.model or "captioner")
            layers = replace_layers(self.ctx.viewer, grounding_layers(result, info), lambda lyr: (
                is_ours(lyr, GROUNDING) or is_ours(lyr, GROUNDING_TILES)))
            self.follow(layers[-1])
            names = ", ".join(f"'{p}'" for p in result.phrases) or "none"
            self.tile.value = f"grounding ({result.method}); phrases: {names}. Click an outlined tile."

        self.ctx.run("Grounding the caption", lambda progress, cancel: backend.ground(
            request, progress=progress, cancel=cancel), done)

    def follow(self, layer: Any) -> None:
        """Say what a clicked (selected) supporting tile of ``layer`` supports."""
        if self._tiles_layer is not None:
            try:
                self._tiles_layer.selected_data.events.items_changed.disconnect(self._on_tile)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._tiles_layer = layer
        layer.mode = "select"
        layer.selected_data.events.items_changed.connect(self._on_tile)

    def _on_tile(self, event: Any = None) -> None:
        layer = self._tiles_layer
        selected = sorted(i for i in layer.selected_data if i < len(layer.data)) if layer is not None else []
        if selected:
            self.tile.value = describe_tile(layer, selected[0])


def no_caption_error(index: int) -> UserError:
    return UserError(f"shape {index}: it has no caption to ground; caption it, or type one and Set caption")
