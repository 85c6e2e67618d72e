"""Export tab: shapes (captions, classes), the class map and the Refine tab's painted marks to
QuPath GeoJSON, and back in (marks return to the Refine tab, the rest as shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from napari_histoclip._layer_meta import LayerKind, is_ours, slide_class_map
from napari_histoclip._slide import slide_of
from napari_histoclip._viewer import add_layer_data
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._paths import chosen_path

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext


class ExportPanel(Container):
    """What to export and where; which file to import onto the current slide."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        self.shapes = ComboBox(label="Shapes", choices=self._shapes_choices, nullable=True)
        self.class_map = ComboBox(label="Class map", choices=self._class_map_choices, nullable=True)
        self.classify = CheckBox(text="Shapes without a class take the class map's", value=True,
                                 tooltip="in the exported file only; the shapes layer is not changed")
        self.marks = CheckBox(text="Refine marks", value=True,
                              tooltip="the tiles painted on the Refine tab, one annotation per class; "
                                      "an import gives them back as marks")
        self.path = FileEdit(label="Save to", mode=FileDialogMode.OPTIONAL_FILE, filter="*.geojson", value=None)
        self.export_button = PushButton(text="Export QuPath GeoJSON")
        self.import_path = FileEdit(label="Import", mode=FileDialogMode.EXISTING_FILE, filter="*.geojson *.json", value=None)
        self.import_button = PushButton(text="Import as shapes")
        super().__init__(
            widgets=[self.shapes, self.class_map, self.classify, self.marks, self.path, self.export_button,
                     self.import_path, self.import_button],
            labels=True,
        )
        self.native.layout().addStretch(1)
        self.export_button.changed.connect(self.export)
        self.import_button.changed.connect(self.import_geojson)

    @handler
    def export(self) -> None:
        """Write the chosen shapes and class map as one QuPath GeoJSON FeatureCollection.

        The layers are read, never changed: classes taken from the class map go to the file only.
        """
        from backend.tasks.geojson import write_qupath_geojson
        from napari_histoclip._geojson import (
            class_map_legend,
            class_map_objects,
            recorded_colors,
            refine_mark_objects,
            shapes_objects,
        )

        slide_layer, info = self.ctx.require_slide()
        shapes, class_map = self.shapes.value, self.class_map.value
        # painted marks only: shapes export as shapes
        marks = self.ctx.painted_marks(info.path) if self.marks.value else {}
        slide_map = slide_class_map(self.ctx.viewer.layers, info.path)
        if shapes is None and class_map is None and not marks:
            raise UserError("Export: choose a shapes layer, a class map, or both (or paint refine marks)")
        chosen = chosen_path(self.path)
        if chosen is None or chosen.is_dir():
            raise UserError("Save to: choose a .geojson file name")
        target = chosen if chosen.suffix else chosen.with_suffix(".geojson")
        if not target.parent.is_dir():
            raise UserError(f"Save to: the folder {target.parent} does not exist; create it or choose another")
        # One colour per class: the slide's class map's legend, then the shapes layer's recorded
        # colours (what File > Save writes), then the name's (backend.tasks.geojson.class_color).
        known: dict[str, str] = {}
        objects = []
        if shapes is not None:
            known.update(recorded_colors(shapes))
        # The slide's class map has the last word: a class the legend shows cyan is cyan in the
        # file, even on a shape that got its class (and a colour) before the map had the class.
        legend_map = class_map if class_map is not None else slide_map
        if legend_map is not None:
            known.update(class_map_legend(legend_map))
        if shapes is not None:
            classes = self._majority(shapes, class_map) if class_map is not None and self.classify.value else {}
            objects += shapes_objects(shapes, slide_layer, classes)  # on the UI thread: a snapshot
        if marks:
            known.update({k: v for k, v in class_map_legend(slide_map).items() if k not in known})
            objects += refine_mark_objects(marks, slide_map, info)

        def work(progress: Any, cancel: Any) -> tuple[Path, int]:
            found = objects + (class_map_objects(class_map, info) if class_map is not None else [])
            return write_qupath_geojson(target, found, known_colors=known), len(found)

        def done(out: tuple[Path, int]) -> None:
            from napari.utils.notifications import show_info

            show_info(f"{out[0].name}: {out[1]} annotations written (QuPath: File > Import objects)")

        self.ctx.run(f"Exporting {target.name}", work, done)

    @handler
    def import_geojson(self) -> Any:
        """Read QuPath GeoJSON annotations onto the current slide as a shapes layer, and its refine
        marks back onto the Refine tab; returns the shapes layer (None: the file held marks only)."""
        from napari.utils.notifications import show_info, show_warning

        from napari_histoclip._geojson import annotations_layer, read_geojson

        _, info = self.ctx.require_slide()
        source = chosen_path(self.import_path)
        if source is None or not source.is_file():
            raise UserError(f"Import: choose a GeoJSON file ({source or 'none chosen'})")
        annotations, skipped = read_geojson(source)
        if not annotations:
            raise UserError(f"{source.name}: no polygon annotations in it ({skipped} other features)")
        if all(a.class_map for a in annotations):
            raise UserError(f"{source.name}: it holds only a class map's polygons, which are not imported "
                            "(they are not shapes or marks): label the slide in the Zero-shot tab to see its map")
        marks = [a for a in annotations if a.refine_mark]
        of_map = [a for a in annotations if a.class_map and not a.hole]
        annotations = [a for a in annotations if not a.refine_mark and not a.class_map]
        if marks and slide_class_map(self.ctx.viewer.layers, info.path) is None:
            raise UserError(f"{source.name}: it holds refine marks; label {info.name} in the Zero-shot tab "
                            "first, then import it (marks sit on the class map's tiles)")
        layer = None
        if annotations:
            layer = add_layer_data(self.ctx.viewer, annotations_layer(annotations, info,
                                                                      f"{info.stem}: {source.stem}"))
        done = [f"{len(annotations)} annotations imported"] if annotations else []
        if marks:
            done.append(f"{self.ctx.import_marks(info, marks)} tiles marked on the Refine tab")
        holes = sum(a.hole for a in annotations)
        notes = []
        if holes:
            notes.append(f"{holes} hole(s) imported as shapes of their own, named 'hole in ...' "
                         "(napari shapes cannot have holes)")
        if of_map:
            names = ", ".join(dict.fromkeys(a.cls for a in of_map if a.cls))
            notes.append(f"{len(of_map)} class-map polygons ({names}) left out: they are a class map, not shapes "
                         "or marks (label the slide in the Zero-shot tab to see its map)")
        if skipped:
            notes.append(f"{skipped} points, lines or empty features skipped")
        note = "; " + "; ".join(notes) if notes else ""
        (show_warning if notes else show_info)(f"{source.name}: {', '.join(done)}{note}")
        return layer

    @staticmethod
    def _majority(shapes: Any, class_map: Any) -> dict[int, str]:
        """The class map's majority class under each shape that has no class (shape index ->
        class), for the export only."""
        from napari_histoclip._shapes import CLASS, majority_classes

        have = shapes.features[CLASS] if CLASS in shapes.features.columns else None
        missing = [i for i in range(len(shapes.data)) if have is None or str(have.iloc[i]) in ("", "nan", "None")]
        return dict(zip(missing, majority_classes(shapes, class_map, missing), strict=True)) if missing else {}

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        # isinstance, not the type's name: a plugin's viewer hands out proxies of layers.
        return [(lyr.name, lyr) for lyr in self._on_slide() if isinstance(lyr, Shapes) and not is_ours(lyr, LayerKind.HITS)]

    def _class_map_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(lyr.name, lyr) for lyr in self._on_slide() if is_ours(lyr, LayerKind.CLASS_MAP)]

    def _on_slide(self) -> list[Any]:
        slide = self.ctx.slide_layer()
        info = slide_of(slide) if slide is not None else None
        if info is None:
            return []
        return [lyr for lyr in self.ctx.viewer.layers if (slide_of(lyr) or info).path == info.path]
