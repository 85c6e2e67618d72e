"""Export tab: shapes (captions, classes) and the class map to QuPath GeoJSON, and back in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from napari_histoclip._layers import is_ours
from napari_histoclip._slide import slide_of
from napari_histoclip._viewer import add_layer_data
from napari_histoclip._widgets._main import UserError, handler


class ExportPanel(Container):
    """What to export and where; which file to import onto the current slide."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.shapes = ComboBox(label="Shapes", choices=self._shapes_choices, nullable=True)
        self.class_map = ComboBox(label="Class map", choices=self._class_map_choices, nullable=True)
        self.classify = CheckBox(text="Shapes without a class take the class map's", value=True)
        self.path = FileEdit(label="Save to", mode="w", filter="*.geojson", value=None)
        self.export_button = PushButton(text="Export QuPath GeoJSON")
        self.import_path = FileEdit(label="Import", mode="r", filter="*.geojson *.json", value=None)
        self.import_button = PushButton(text="Import as shapes")
        super().__init__(
            widgets=[self.shapes, self.class_map, self.classify, self.path, self.export_button,
                     self.import_path, self.import_button],
            labels=True,
        )
        self.native.layout().addStretch(1)
        self.export_button.changed.connect(self.export)
        self.import_button.changed.connect(self.import_geojson)

    @handler
    def export(self) -> None:
        """Write the chosen shapes and class map as one QuPath GeoJSON FeatureCollection."""
        from napari_histoclip._geojson import class_map_features, shapes_features, write_geojson

        slide_layer, info = self.ctx.require_slide()
        shapes, class_map = self.shapes.value, self.class_map.value
        if shapes is None and class_map is None:
            raise UserError("Export: choose a shapes layer, a class map, or both")
        target = self.path.value
        if not target or str(target) in ("", ".") or Path(target).is_dir():
            raise UserError("Save to: choose a .geojson file name")
        target = Path(target) if Path(target).suffix else Path(target).with_suffix(".geojson")
        colors = {}
        if class_map is not None:
            colors = dict(zip(class_map.metadata.get("labels", []), class_map.metadata.get("colors", []), strict=False))
            if shapes is not None and self.classify.value:
                self._classify(shapes, class_map)

        def work(progress: Any, cancel: Any) -> tuple[Path, int]:
            features = []
            if shapes is not None:
                features += shapes_features(shapes, slide_layer, colors)
            if class_map is not None:
                features += class_map_features(class_map, info)
            return write_geojson(target, features), len(features)

        def done(out: tuple[Path, int]) -> None:
            from napari.utils.notifications import show_info

            show_info(f"{out[0].name}: {out[1]} annotations written (QuPath: File > Import objects)")

        self.ctx.run(f"Exporting {target.name}", work, done)

    @handler
    def import_geojson(self) -> Any:
        """Read QuPath GeoJSON annotations onto the current slide as a shapes layer."""
        from napari.utils.notifications import show_info, show_warning

        from napari_histoclip._geojson import annotations_layer, read_geojson

        _, info = self.ctx.require_slide()
        source = self.import_path.value
        if not source or not Path(source).is_file():
            raise UserError(f"Import: choose a GeoJSON file ({source or 'none chosen'})")
        annotations, skipped = read_geojson(source)
        if not annotations:
            raise UserError(f"{Path(source).name}: no polygon annotations in it ({skipped} other features)")
        layer = add_layer_data(self.ctx.viewer, annotations_layer(annotations, info, f"{info.stem}: {Path(source).stem}"))
        note = f"; {skipped} points, lines or empty features skipped" if skipped else ""
        (show_warning if skipped else show_info)(f"{Path(source).name}: {len(annotations)} annotations imported{note}")
        return layer

    @staticmethod
    def _classify(shapes: Any, class_map: Any) -> None:
        """Label shapes that have no class with the class map's majority class under them."""
        from napari_histoclip._shapes import CLASS, ensure_caption_columns, majority_classes, set_classes

        ensure_caption_columns(shapes)
        missing = [i for i, c in enumerate(shapes.features[CLASS]) if str(c) in ("", "nan", "None")]
        if missing:
            set_classes(shapes, missing, majority_classes(shapes, class_map, missing))

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        # isinstance, not the type's name: a plugin's viewer hands out proxies of layers.
        return [(lyr.name, lyr) for lyr in self._on_slide() if isinstance(lyr, Shapes) and not is_ours(lyr, "hits")]

    def _class_map_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(lyr.name, lyr) for lyr in self._on_slide() if is_ours(lyr, "class_map")]

    def _on_slide(self) -> list[Any]:
        slide = self.ctx.slide_layer()
        info = slide_of(slide) if slide is not None else None
        if info is None:
            return []
        return [lyr for lyr in self.ctx.viewer.layers if (slide_of(lyr) or info).path == info.path]
