"""Refine tab: paint the right class on a few tiles of the class map; the whole map follows.

The user paints on the zero-shot class-map Labels layer with napari's own brush and label
picker (the layer's label values are 1 + class index). The class map has one pixel per tile,
so the brush paints whole tiles: a tile is marked when the brush covers its centre, which for a
brush of a tile or more is when the paint covers most of it. Painting 0 (the eraser) unmarks.
napari emits no paint event where a stroke changes nothing, so painting a tile with the class
the map already gives it does not mark it (a confirmation mark needs another class first).
"Refine" sends the marks to ``Backend.refine`` (the cached embeddings; no pixel is read) and
replaces the class map, probability layers and legend; "Where is it unsure?" lists the tiles
where a next mark helps most, each a click from its place. Marks are kept per slide, can be
undone stroke by stroke, and "Save as classifier" turns the marks of every slide into a
classifier bundle; "Apply classifier" labels a slide with a bundle (then Refine refines it).
"Add class" gives the map a class the prompts lack (a name and painted examples, no prompt).
Shapes with a class (the Caption tab's class field) mark too: every tissue tile whose centre lies
inside such a shape counts as a mark of its class when Refine or Save runs
(``napari_histoclip._shapes.shape_marks``); a painted mark wins over a shape's on the same tile.
Shape marks live on the shapes (delete the shape or clear its class to drop them), so Undo and
Clear act on painted marks only. Painted marks go to QuPath GeoJSON with the Export tab and come
back as marks on import (:meth:`RefinePanel.import_marks`). A tab of its own (not part of
Zero-shot): it acts on the map zero-shot made and has its own list and buttons, and the Zero-shot
tab is already full.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, LineEdit, PushButton, SpinBox
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from backend.needs import Task
from napari_histoclip._context import PromptSet
from napari_histoclip._layer_meta import LayerKind, is_ours, layer_record, slide_class_map, update_record
from napari_histoclip._layers import default_color
from napari_histoclip._marks import Cell, SlideMarks, marks_request
from napari_histoclip._slide import slide_of
from napari_histoclip._viewer import frame_box
from napari_histoclip._widgets._capabilities import marks_only
from napari_histoclip._widgets._handler import UserError, handler

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext
    from napari_histoclip._widgets._main import HistoclipWidget

log = logging.getLogger(__name__)


class RefinePanel(Container):
    """Marks painted on the class map, Refine, the unsure tiles, undo and save as classifier."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        self.help = Label(value="Paint the right class on a few tiles of the class map with napari's brush "
                                "(pick the class in the layer's label box), or draw shapes and give them a class "
                                "in the Caption tab, then Refine.")
        self.help.native.setWordWrap(True)
        self.marks_label = Label(value="no marks")
        self.marks_label.native.setWordWrap(True)  # "n marked tiles (class k, ...)" outgrows the dock
        self.legend = Label(value="")  # the map's classes in the colours the brush paints them
        self.legend.native.setToolTip("the class map's classes: pick one in the layer's label box to paint it")
        self.refine_button = PushButton(text="Refine")
        self.start_button = PushButton(text="Start from marks",
                                       tooltip="a map of the slide's tissue tiles to paint classes on, without "
                                               "prompts: any model (an image-only one starts here); add classes, "
                                               "paint a few tiles of each, then Refine")
        self.undo_button = PushButton(text="Undo last stroke")
        self.clear_button = PushButton(text="Clear marks")
        self.new_class = LineEdit(label="New class", value="",
                                  tooltip="a class the prompts lack: add it, then paint its tiles (no prompt needed)")
        self.add_class_button = PushButton(text="Add class")
        self.n_unsure = SpinBox(label="Unsure tiles", value=10, min=1, max=200)
        self.unsure = QListWidget()
        self.unsure.setMinimumWidth(0)
        self.unsure.setToolTip("where the refined map is least sure or disagrees most with the prompts; click to go there")
        self.save_path = LineEdit(label="Classifier", value="", tooltip="a new folder for the classifier bundle")
        self.save_path.native.setPlaceholderText("folder to save the classifier bundle in")
        self.save_button = PushButton(text="Save as classifier")
        self.apply_button = PushButton(text="Apply classifier",
                                       tooltip="label the slide with the classifier bundle in the folder above")
        super().__init__(
            widgets=[self.help, self.marks_label, self.legend, self.start_button, self.new_class,
                     self.add_class_button, self.refine_button, self.undo_button, self.clear_button, self.n_unsure,
                     self.save_path, self.save_button, self.apply_button],
            labels=True,
        )
        self.native.layout().insertWidget(self.index(self.n_unsure) + 1, self.unsure)  # under "Unsure tiles"
        self.native.layout().addStretch(1)
        self.slides: dict[str, SlideMarks] = {}
        self._unused: dict[str, list[str]] = {}  # slide -> shape classes the map lacks (not marks)
        self._watched: dict[Any, tuple[Any, Any]] = {}  # unique_id -> (class map, its paint slot)
        self._shown: Any = None  # (result, info) of the last refined map, for the unsure list
        self._unsure_cells: list[Cell] = []
        self.refine_button.changed.connect(self.refine)
        self.start_button.changed.connect(self.start_from_marks)
        self.add_class_button.changed.connect(self.add_class)
        self.undo_button.changed.connect(self.undo)
        self.clear_button.changed.connect(self.clear_marks)
        self.save_button.changed.connect(self.save)
        self.apply_button.changed.connect(self.apply)
        self.unsure.itemClicked.connect(lambda item: self.go_to(self.unsure.row(item)))
        ctx.viewer.layers.events.inserted.connect(self._layer_added)
        for layer in ctx.viewer.layers:  # a reopened dock: the maps already there
            if is_ours(layer, LayerKind.CLASS_MAP) and not layer_record(layer).region:
                self._watch(layer)

    def disconnect_viewer(self) -> None:
        """Stop following the viewer (the dock is closing): its events must not reach dead widgets."""
        self._unwatch()
        try:
            self.ctx.viewer.layers.events.inserted.disconnect(self._layer_added)
        except (RuntimeError, TypeError, ValueError):
            pass

    # --- marks from paint -------------------------------------------------------------------

    def source_of(self, info_or_path: Any) -> str | None:
        """The classifier bundle the slide's class map came from (None: zero-shot prompts)."""
        layer = self.map_of(getattr(info_or_path, "path", info_or_path))
        return None if layer is None else layer_record(layer).classifier

    def class_map_layer(self, info: Any) -> Any:
        """The whole-slide class-map layer of ``info``'s slide (zero-shot, classifier or refined)."""
        return self.map_of(info.path)

    def map_of(self, slide_path: str) -> Any:
        """The whole-slide class-map layer of the slide ``slide_path`` (None: it has none)."""
        return slide_class_map(self.ctx.viewer.layers, slide_path)

    def _layer_added(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and is_ours(layer, LayerKind.CLASS_MAP) and not layer_record(layer).region:
            self._watch(layer)

    def _watch(self, layer: Any) -> None:
        """Follow the paint strokes of a whole-slide class map (every slide's, not only the
        last one made), and give it a brush of one tile (napari's default is 10 px, and the map
        has one pixel per tile)."""
        if layer.unique_id in self._watched:
            return
        slot = partial(self._painted, layer)
        self._watched[layer.unique_id] = (layer, slot)
        layer.events.paint.connect(slot)
        layer.brush_size = 1

    def _unwatch(self) -> None:
        for layer, slot in self._watched.values():
            try:
                layer.events.paint.disconnect(slot)
            except (RuntimeError, TypeError, ValueError):
                pass
        self._watched = {}

    def arm(self) -> Any:
        """Make the chosen slide's class map ready to paint marks on (the Refine tab is shown):
        the active layer, in paint mode, with a brush of one tile and a class picked. Returns
        the map (None: the slide has none yet)."""
        slide = self.ctx.slide_layer()
        info = slide_of(slide) if slide is not None else None
        layer = self.class_map_layer(info) if info is not None else None
        if layer is None:
            return None
        self._watch(layer)
        layer.brush_size = 1
        if not 1 <= layer.selected_label <= len(layer_record(layer).labels):
            layer.selected_label = 1
        self.ctx.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.show_count(info)
        return layer

    def _painted(self, layer: Any, event: Any) -> None:
        """A stroke on a class map: its tissue tiles painted a class become marks; background
        and non-class values painted are put back. Runs in a Qt slot: an error is shown and
        logged, never raised (PyQt would abort napari)."""
        try:
            self._take_stroke(layer, event.value)
        except Exception as e:  # noqa: BLE001 - see above; the user is told
            from napari.utils.notifications import show_error

            log.error("a paint stroke on %s could not be read", getattr(layer, "name", layer), exc_info=e)
            show_error(f"Refine: the stroke on {getattr(layer, 'name', 'the class map')} was not taken as marks "
                       f"({type(e).__name__}: {e})")

    def _take_stroke(self, layer: Any, atoms: Any) -> None:
        from napari_histoclip._paint import paint_changes

        info = slide_of(layer)
        if info is None:
            return
        labels = list(layer_record(layer).labels)
        state = self.slides.setdefault(info.path, SlideMarks())
        revert = state.take_stroke(paint_changes(atoms, np.shape(layer.data)), labels)
        if revert:
            data = np.asarray(layer.data)
            for (r, c), before in revert:
                data[r, c] = before
            layer.refresh()
        self.show_count(info)

    def show_count(self, info: Any) -> None:
        """Say how many tiles of the slide are marked, and show its class map's legend."""
        marks = self.marks_of(info.path)
        n = len(marks)
        per = ", ".join(f"{t.label} {len(t.cells)}" for t in marks_request(marks)) if n else ""
        text = f"{n} marked tiles" + (f" ({per})" if per else "") if n else "no marks"
        unused = self._unused.get(info.path)
        if unused:
            text += (f"; shapes of class {', '.join(unused)} are not marks: the map has no such class "
                     "(type it under New class and press Add class to make it one)")
        self.marks_label.value = text
        self._show_legend(info)

    def _show_legend(self, info: Any) -> None:
        """The legend of the slide's class map (classes, colours, shares), as the Zero-shot tab's."""
        from napari_histoclip._layers import legend
        from napari_histoclip._widgets._zeroshot import legend_html

        layer = self.map_of(info.path)
        if layer is None:
            self.legend.value = ""
            return
        record = layer_record(layer)
        labels, colors = list(record.labels), list(record.colors)
        colors += [default_color(i) for i in range(len(colors), len(labels))]
        self.legend.value = legend_html(legend(labels, colors, np.asarray(layer.data)))

    def marks_of(self, slide_path: str) -> dict[Cell, str]:
        """Every mark on a slide: tiles under its classified shapes, then its painted marks
        (which win on a tile both mark)."""
        from napari.layers import Shapes

        from napari_histoclip._shapes import shape_marks

        out: dict[Cell, str] = {}
        layer = self.map_of(slide_path)
        unused: dict[str, None] = {}
        if layer is not None:
            classes = set(layer_record(layer).labels)
            for shapes in self.ctx.viewer.layers:
                own = slide_of(shapes)
                if isinstance(shapes, Shapes) and not is_ours(shapes, LayerKind.HITS) and own is not None \
                        and own.path == slide_path:
                    # A class the map lacks (a QuPath class typed on a shape) is no mark: a new
                    # class is made with Add class, never by a shape's label.
                    for cell, name in shape_marks(shapes, layer).items():
                        if name in classes:
                            out[cell] = name
                        else:
                            unused[name] = None
        self._unused[slide_path] = list(unused)
        state = self.slides.get(slide_path)
        out.update(state.marks if state else {})
        return out

    def import_marks(self, info: Any, annotations: Any) -> int:
        """Make refine-mark annotations read from GeoJSON (``_geojson.Annotation`` with
        ``refine_mark``) marks of ``info``'s slide again, painted on its class map as a brush
        would (one stroke: Undo takes them back). Returns the number of tiles marked."""
        from napari_histoclip._geojson import annotation_marks

        layer = self.class_map_layer(info)
        if layer is None:
            raise UserError(f"Import: the file has refine marks; label {info.name} in the Zero-shot tab first, "
                            "then import it (marks sit on the class map's tiles)")
        cells = annotation_marks(annotations, layer, info)
        labels = list(layer_record(layer).labels)
        state = self.slides.setdefault(info.path, SlideMarks())
        data = np.asarray(layer.data)
        stroke = []
        for cell, name in cells.items():
            stroke.append((cell, state.marks.get(cell), int(data[cell])))
            state.marks[cell] = name
            if name in labels:  # a class the map lacks still marks; it has no colour to show yet
                data[cell] = labels.index(name) + 1
        if stroke:
            state.strokes.append(stroke)
            layer.refresh()
        self.show_count(info)
        return len(cells)

    # --- handlers -------------------------------------------------------------------------

    def prompts(self) -> PromptSet:
        """The Zero-shot tab's prompts to refine from (a ``UserError`` with fewer than two)."""
        prompts = self.ctx.prompt_set()
        if len(prompts.labels) < 2:
            raise UserError("Refine: the Zero-shot tab needs at least two class prompts to start from")
        return prompts

    @handler
    def add_class(self) -> None:
        """Give the class map a class of its own for ``New class`` (label value n + 1), to paint."""
        from napari.utils.colormaps import DirectLabelColormap

        from backend.palette import new_class_rgb, to_hex, to_rgb
        from napari_histoclip._layers import UNKNOWN_COLOR, UNKNOWN_LABEL, hex_to_rgba

        name = self.new_class.value.strip()
        if not name:
            raise UserError("New class: type the name of the class to add")
        _, info = self.ctx.require_slide()
        layer = self.class_map_layer(info)
        if layer is None:
            raise UserError("New class: label the slide in the Zero-shot tab first")
        record = layer_record(layer)
        labels = list(record.labels)
        if name in labels:
            raise UserError(f"New class: {name!r} is already a class ({', '.join(labels)})")
        n = len(labels)
        data = np.asarray(layer.data)
        if np.any(data == n + 1) and marks_only(layer):  # its unpainted tiles: "unknown" moves up one
            data[data == n + 1] = n + 2
        elif np.any(data == n + 1):
            raise UserError("New class: the map has 'unknown' tiles, whose value the new class would take; "
                            "set 'Unknown below' to 0 in the Zero-shot tab and label the slide again")
        colors = list(record.colors)
        color = to_hex(new_class_rgb([to_rgb(c) for c in colors]))  # as the backend colours a refine's new class
        colors.append(color)
        table = dict(layer.colormap.color_dict)
        table[n + 1], table[n + 2] = hex_to_rgba(color), hex_to_rgba(UNKNOWN_COLOR)
        layer.colormap = DirectLabelColormap(color_dict=table)
        layer.features = {"index": np.arange(n + 3), "class": ["no tissue", *labels, name, UNKNOWN_LABEL]}
        update_record(layer, labels=(*labels, name), colors=tuple(colors))
        layer.selected_label = n + 1  # ready to paint it
        self.new_class.value = ""

    @handler
    def start_from_marks(self) -> None:
        """Show the chosen slide's tissue tiles as a class map without classes (every tile
        "unknown"), to add classes to and paint: a refine from marks alone, for any model."""
        from backend.api import RefineRequest

        _, info = self.ctx.require_slide()
        request = RefineRequest(self.ctx.slide_ref(info), (), model=self.ctx.model_name)
        backend = self.ctx.backend

        def done(result: Any) -> None:
            self.slides.pop(info.path, None)  # marks were made against another map
            self.show_count(info)
            layers = self.ctx.show_class_map(result, info, [])
            update_record(layers[0], marks_only=True)

        self.ctx.run(f"Tiles of {info.name}", lambda progress, cancel: backend.refine(
            request, progress=progress, cancel=cancel), done)

    def marks_only_map(self, layer: Any) -> bool:
        """Refine from marks alone: the map was started so, or the model embeds no text."""
        return marks_only(layer) or not self.ctx.model_can(Task.PROMPT_REFINE)

    @handler
    def refine(self) -> None:
        """Refine the chosen slide's class map with its marks (no marks: the zero-shot map)."""
        from backend.api import RefineRequest

        _, info = self.ctx.require_slide()
        if self.class_map_layer(info) is None:
            raise UserError("Refine: label the slide in the Zero-shot tab first, then paint marks on its class map")
        classifier = self.source_of(info)
        all_marks = self.marks_of(info.path)
        marks = marks_request(all_marks)
        self.show_count(info)  # shape marks are counted when Refine reads them
        layer = self.class_map_layer(info)
        by_name = None  # marks alone: each class keeps its colour by name (classes come in marking order)
        if classifier is not None:  # the map came from a classifier: refine that one
            common: dict[str, Any] = dict(classifier=classifier)
            colors = list(layer_record(layer).colors)
        elif self.marks_only_map(layer):
            common, colors = dict(model=self.ctx.model_name), []
            record = layer_record(layer)
            by_name = dict(zip(record.labels, record.colors, strict=False))
        else:
            prompts = self.prompts()
            added = list(layer_record(layer).colors)[len(prompts.colors):]
            colors = [*prompts.colors, *added]  # classes added here keep the colour they were painted in
            common = dict(model=self.ctx.model_name, labels=prompts.labels, synonyms=prompts.synonyms,
                          templates=prompts.templates, unknown_threshold=prompts.unknown_threshold,
                          colors=tuple(prompts.colors))
        request = RefineRequest(self.ctx.slide_ref(info), marks, **common)
        prior_request = RefineRequest(self.ctx.slide_ref(info), (), **common)
        backend, k = self.ctx.backend, int(self.n_unsure.value)

        def work(progress: Any, cancel: Any) -> tuple[Any, Any]:
            refined = backend.refine(request, progress=progress, cancel=cancel)
            prior = backend.refine(prior_request, progress=progress, cancel=cancel) if marks else refined
            return refined, prior

        def done(results: tuple[Any, Any]) -> None:
            refined, prior = results
            self.ctx.warn_random(refined, request.model or str(classifier))
            all_colors = list(colors) + [default_color(i) for i in range(len(colors), len(refined.labels))]
            if by_name is not None:
                all_colors = [by_name.get(n, default_color(i)) for i, n in enumerate(refined.labels)]
            layers = self.ctx.show_class_map(refined, info, all_colors)
            if classifier is not None:
                update_record(layers[0], classifier=classifier)  # the refined map keeps its source
            if by_name is not None:
                update_record(layers[0], marks_only=True)
            self.show_unsure(refined, prior, info, k)
            self.show_count(info)

        self.ctx.run(f"Refining {info.name} ({len(all_marks)} marks)", work, done)

    def show_unsure(self, result: Any, prior: Any, info: Any, k: int) -> None:
        """Fill the list with the tiles where a mark would help most (marked tiles left out)."""
        from backend.tasks.refine import unsure_tiles

        cells = np.argwhere(np.asarray(result.class_map) > 0)
        probs = np.asarray(result.probabilities)[:, cells[:, 0], cells[:, 1]].T
        prior_p = np.asarray(prior.probabilities)[:, cells[:, 0], cells[:, 1]].T
        marked = self.marks_of(info.path)
        exclude = [i for i, (r, c) in enumerate(cells) if (int(r), int(c)) in marked]
        top = unsure_tiles(probs, prior_p, k=k, exclude=exclude)
        self.unsure.clear()
        self._unsure_cells = [(int(cells[i, 0]), int(cells[i, 1])) for i in top]
        self._shown = (result, info)
        for i in top:
            p = probs[i]
            best = int(np.argmax(p))
            QListWidgetItem(f"tile ({cells[i, 0]}, {cells[i, 1]}): {result.labels[best]} {p[best]:.2f}", self.unsure)

    def go_to(self, row: int) -> None:
        """Centre and zoom the viewer on the ``row``-th unsure tile."""
        if self._shown is None or not 0 <= row < len(self._unsure_cells):
            return
        result, info = self._shown
        r, c = self._unsure_cells[row]
        (sr, sc), (tr, tc) = result.geometry.scale, result.geometry.translate
        # geometry: level-0 pixels, (row, col); a map pixel is centred on its tile.
        y, x = tr + r * sr, tc + c * sc
        frame_box(self.ctx.viewer, (x - sc / 2, y - sr / 2, sc, sr), info)

    @handler
    def undo(self) -> None:
        """Take back the last stroke's marks and refine again."""
        _, info = self.ctx.require_slide()
        state = self.slides.get(info.path)
        if state is None or not state.strokes:
            raise UserError("Undo: no marks to take back on this slide")
        stroke = state.strokes.pop()
        layer = self.class_map_layer(info)
        for cell, mark, value in reversed(stroke):
            if mark is None:
                state.marks.pop(cell, None)
            else:
                state.marks[cell] = mark
            if layer is not None:
                np.asarray(layer.data)[cell] = value
        if layer is not None:
            layer.refresh()
        self.show_count(info)
        self.refine()

    @handler
    def clear_marks(self) -> None:
        """Drop every mark of this slide and show the zero-shot map again."""
        _, info = self.ctx.require_slide()
        self.slides.pop(info.path, None)
        self.show_count(info)
        self.refine()

    @handler
    def save(self) -> None:
        """Write a classifier bundle trained on the marks of every slide marked so far."""
        from napari_histoclip._widgets._refine_bundle import save_classifier

        save_classifier(self)

    @handler
    def apply(self) -> None:
        """Label the chosen slide with the classifier bundle named in the folder field; its map
        replaces the class map, and Refine then refines that classifier."""
        from napari_histoclip._widgets._refine_bundle import apply_classifier

        apply_classifier(self)


def add_refine_tab(dock: HistoclipWidget) -> RefinePanel:
    """Make the Refine panel and add it to the dock's tabs (the dock's one hook)."""
    panel = RefinePanel(dock)
    dock.tabs.addTab(panel.native, "Refine")
    dock.tabs.currentChanged.connect(lambda i: panel.arm() if dock.tabs.widget(i) is panel.native else None)
    return panel
