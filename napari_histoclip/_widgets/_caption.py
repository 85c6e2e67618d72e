"""Caption tab: caption drawn regions; pick a caption from the n-best list or edit it."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from backend.caption.config import DecodeConfig
from napari_histoclip._layer_meta import LayerKind, is_ours, layer_record
from napari_histoclip._shapes import (
    caption_layer_kwargs,
    choose_caption,
    nbest,
    nbest_sources,
    set_captions,
    shape_regions,
)
from napari_histoclip._slide import slide_of
from napari_histoclip._viewer import add_layer_data
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._paths import chosen_path

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext

CAPTIONER_ENV = "HISTOCLIP_CAPTIONER"
CORPUS_ENV = "HISTOCLIP_CORPUS"
CORPUS_FILTER = "*.txt *.csv *.tsv *.parquet *.jsonl *.json"


class CaptionSource(StrEnum):
    """Where captions come from: a trained ClipCap bundle, or the nearest texts of a corpus
    (offered when the model is vision-language: the corpus is embedded by its text tower)."""

    CAPTIONER = "a captioner bundle"
    CORPUS = "a caption corpus"


class CaptionScope(StrEnum):
    """Which shapes "Caption shapes" captions. Uncaptioned by default: napari selects a shape
    just drawn, so "the selection" would caption only the last one drawn."""

    UNCAPTIONED = "uncaptioned shapes"
    SELECTED = "selected shapes"
    ALL = "all shapes"


class CaptionPanel(Container):
    """Regions layer, captioner and decoding options; the selected shape's n-best captions."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        self.shapes = ComboBox(label="Regions", choices=self._shapes_choices, tooltip="a Shapes layer on the slide")
        self.new_layer_button = PushButton(text="New regions layer")
        self.source = ComboBox(label="Captions from", choices=self._source_choices,
                               tooltip="a trained captioner bundle, or the nearest captions of a corpus you bring "
                                       "(for vision-language models)")
        corpus = os.environ.get(CORPUS_ENV, "")
        self.corpus = FileEdit(label="Corpus", mode=FileDialogMode.EXISTING_FILE, filter=CORPUS_FILTER,
                               value=Path(corpus) if corpus else None,
                               tooltip="one caption a line (.txt), or a .csv/.parquet/.jsonl table with a 'text' "
                                       f"column; embedded once and cached (default from ${CORPUS_ENV})")
        default = os.environ.get(CAPTIONER_ENV, "")
        self.captioner = FileEdit(label="Captioner", mode=FileDialogMode.EXISTING_DIRECTORY,
                                  value=Path(default) if default else None,
                                  tooltip=f"a captioner bundle folder (default from ${CAPTIONER_ENV})")
        # Defaults and limits are the backend's (DecodeConfig), checked before work starts.
        self.beams = SpinBox(label="Beams", value=DecodeConfig.num_beams, min=1, max=10)
        self.n_best = SpinBox(label="N-best", value=3, min=1, max=10, tooltip="captions per shape, at most the beams")
        self.max_tokens = SpinBox(label="Max tokens", value=DecodeConfig.max_new_tokens, min=1, max=80,
                                  tooltip="caption length limit")
        self.scope = ComboBox(label="Caption", choices=[c.value for c in CaptionScope], value=CaptionScope.UNCAPTIONED.value,
                              tooltip="which shapes to caption: those without a caption, the selected ones, or all")
        self.caption_button = PushButton(text="Caption shapes", tooltip="caption the shapes chosen above")
        self.which = Label(value="select a shape to see its captions")
        self.nbest_list = QListWidget()
        self.nbest_list.setWordWrap(True)
        self.nbest_list.setMinimumHeight(70)
        self.nbest_list.setMaximumHeight(130)
        self.edit = LineEdit(label="Caption", value="")
        self.apply_button = PushButton(text="Set caption")
        self.cls = LineEdit(label="Class", value="", tooltip="QuPath classification of the selected shapes")
        self.cls_button = PushButton(text="Set class of selected shapes")
        from napari_histoclip._widgets._grounding import GroundingControls

        self.grounding = GroundingControls(ctx, self)
        super().__init__(
            widgets=[self.shapes, self.new_layer_button, self.source, self.captioner, self.corpus, self.beams, self.n_best,
                     self.max_tokens, self.scope, self.caption_button, self.which, self.edit, self.apply_button,
                     self.grounding, self.cls, self.cls_button],
            labels=True,
        )
        self.source.changed.connect(self._show_source)
        self._show_source()
        # The n-best list sits under the "which shape" label.
        layout = self.native.layout()
        layout.insertWidget(self.index(self.which) + 1, self.nbest_list)
        layout.addStretch(1)
        self.new_layer_button.changed.connect(self.new_layer)
        self.caption_button.changed.connect(self.caption)
        self.apply_button.changed.connect(self.apply_edit)
        self.edit.native.returnPressed.connect(self.apply_edit)
        self.cls_button.changed.connect(self.set_class)
        self.nbest_list.itemClicked.connect(self._choose_item)
        self.shapes.changed.connect(self._watch)
        self._watched: Any = None
        self._shown: int | None = None

    # --- handlers -------------------------------------------------------------------------

    @handler
    def new_layer(self) -> Any:
        """Add an empty regions layer on the slide, in rectangle-drawing mode."""
        _, info = self.ctx.require_slide()
        layer = add_layer_data(self.ctx.viewer, ([], caption_layer_kwargs(info), "shapes"))
        layer.mode = "add_rectangle"
        self.shapes.value = layer
        return layer

    @handler
    def caption(self) -> None:
        """Caption the shapes the scope combo chooses (uncaptioned, selected or all) in a worker."""
        from backend.api import CaptionRequest

        slide_layer, info = self.ctx.require_slide()
        layer = self.shapes.value
        if layer is None or len(layer.data) == 0:
            raise UserError("Regions: draw rectangles or polygons in a regions layer first")
        if self.source.value == CaptionSource.CORPUS.value:
            return self._caption_from_corpus(slide_layer, info, layer)
        captioner = chosen_path(self.captioner)
        if captioner is None:
            raise UserError(f"Captioner: choose a captioner bundle folder (or set ${CAPTIONER_ENV})")
        indices = self.shapes_to_caption(layer)
        config = self.decode_config()
        regions = shape_regions(layer, slide_layer, indices)
        request = CaptionRequest(
            slide=self.ctx.slide_ref(info),
            regions=tuple(regions),
            captioner=str(captioner),
            model=self.ctx.model_name,
            beams=config.num_beams,
            n_best=config.n_best,
            max_tokens=config.max_new_tokens,
        )
        backend = self.ctx.backend

        def done(result: Any) -> None:
            set_captions(layer, indices, result.captions)
            from napari_histoclip._caption_view import fit_captions

            fit_captions(self.ctx.viewer, layer, indices)  # no caption cut at the canvas edge
            # The form follows the canvas: the selected shape's captions, if one is selected.
            selected = sorted(i for i in layer.selected_data if i < len(layer.data))
            self.show_shape(selected[0] if selected else indices[0])

        self.ctx.run(f"Captioning {len(regions)} region(s)", lambda progress, cancel: backend.caption(
            request, progress=progress, cancel=cancel), done)

    def _caption_from_corpus(self, slide_layer: Any, info: Any, layer: Any) -> None:
        """Caption the chosen shapes with the nearest captions of the corpus file (in a worker)."""
        from backend.api import CorpusCaptionRequest

        corpus = chosen_path(self.corpus)
        if corpus is None:
            raise UserError(f"Corpus: choose a caption corpus file (or set ${CORPUS_ENV})")
        indices = self.shapes_to_caption(layer)
        request = CorpusCaptionRequest(slide=self.ctx.slide_ref(info), regions=tuple(shape_regions(layer, slide_layer, indices)),
                                       corpus=str(corpus), model=self.ctx.model_name, n_best=int(self.n_best.value))
        backend = self.ctx.backend

        def done(result: Any) -> None:
            set_captions(layer, indices, result.captions)
            selected = sorted(i for i in layer.selected_data if i < len(layer.data))
            self.show_shape(selected[0] if selected else indices[0])

        self.ctx.run(f"Captioning {len(indices)} region(s) from {corpus.name}",
                     lambda progress, cancel: backend.corpus_caption(request, progress=progress, cancel=cancel), done)

    def grounding_request(self) -> tuple[Any, Any]:
        """The grounding request of the shown shape's caption, and its slide.

        A caption the captioner bundle generated (it is in the shape's n-best list while the
        source is the bundle) is grounded by leaving tiles out of the captioner's input; a
        corpus caption or a typed one by tile-text similarity with the chosen model.
        """
        from backend.api import GroundingRequest
        from napari_histoclip._shapes import CAPTION, nbest_sources
        from napari_histoclip._widgets._grounding import no_caption_error

        slide_layer, info = self.ctx.require_slide()
        layer, index = self._current()
        caption = str(layer.features[CAPTION].iloc[index]) if CAPTION in layer.features.columns else ""
        if caption in ("", "nan", "None"):
            raise no_caption_error(index)
        (region,) = shape_regions(layer, slide_layer, [index])
        generated = [t for t, _, src in nbest_sources(layer, index) if not src]
        captioner = chosen_path(self.captioner)
        bundle = str(captioner) if captioner is not None else None
        if self.source.value == CaptionSource.CAPTIONER.value and bundle and caption in generated:
            return GroundingRequest(self.ctx.slide_ref(info), region, caption, captioner=bundle), info
        return GroundingRequest(self.ctx.slide_ref(info), region, caption, model=self.ctx.model_name), info

    def shapes_to_caption(self, layer: Any) -> list[int]:
        """The area shapes of ``layer`` the scope combo chooses (lines and paths have no area).

        Raises
        ------
        UserError
            None to caption, saying why and what to choose instead.
        """
        from napari_histoclip._shapes import CAPTION

        scope = CaptionScope(self.scope.value)
        areas = [i for i, kind in enumerate(layer.shape_type) if kind in ("rectangle", "polygon", "ellipse")]
        if not areas:
            raise UserError(f"{layer.name}: no rectangles, polygons or ellipses to caption")
        if scope is CaptionScope.SELECTED:
            chosen = [i for i in sorted(layer.selected_data) if i in areas]
            if not chosen:
                raise UserError(f"{layer.name}: no shape selected; select shapes, or caption "
                                f"{CaptionScope.UNCAPTIONED.value} or {CaptionScope.ALL.value}")
            return chosen
        if scope is CaptionScope.UNCAPTIONED:
            captions = layer.features[CAPTION] if CAPTION in layer.features.columns else None
            chosen = [i for i in areas if captions is None or str(captions.iloc[i]) in ("", "nan", "None")]
            if not chosen:
                raise UserError(f"{layer.name}: every shape has a caption; choose {CaptionScope.ALL.value!r} "
                                "to caption them again")
            return chosen
        return areas

    def decode_config(self) -> DecodeConfig:
        """The form's decoding settings, checked by the backend's rules.

        Raises
        ------
        backend.errors.InputError
            E.g. n-best above the beams, naming both.
        """
        return DecodeConfig(num_beams=int(self.beams.value), n_best=int(self.n_best.value),
                            max_new_tokens=int(self.max_tokens.value))

    def show_shape(self, index: int | None) -> None:
        """Show shape ``index``'s n-best captions and current caption in the form."""
        layer = self.shapes.value
        self.nbest_list.clear()
        self._shown = index
        if layer is None or index is None or index >= len(layer.data):
            self.which.value = "select a shape to see its captions"
            self.edit.value = ""
            return
        from napari_histoclip._shapes import CAPTION, CLASS

        self.which.value = f"shape {index}: click a caption to choose it"
        current = str(layer.features[CAPTION].iloc[index]) if CAPTION in layer.features.columns else ""
        for text, score, sources in nbest_sources(layer, index):
            item = QListWidgetItem(f"{score:+.2f}  {text}" + (f"  [from {sources}]" if sources else ""))
            item.setData(Qt.ItemDataRole.UserRole, text)
            if text == current:  # the chosen caption stands out in bold
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            self.nbest_list.addItem(item)
        self.edit.value = current if current != "nan" else ""
        cls = str(layer.features[CLASS].iloc[index]) if CLASS in layer.features.columns else ""
        self.cls.value = cls if cls != "nan" else ""

    @handler
    def choose(self, rank: int) -> None:
        """Make the ``rank``-th n-best caption (0: best) the shown shape's caption."""
        layer, index = self._current()
        options = nbest(layer, index)
        if not 0 <= rank < len(options):
            raise UserError(f"shape {index}: no caption number {rank + 1} (it has {len(options)})")
        choose_caption(layer, index, options[rank][0])
        self.show_shape(index)

    @handler
    def apply_edit(self) -> None:
        """Make the edited text the shown shape's caption."""
        layer, index = self._current()
        choose_caption(layer, index, self.edit.value.strip())
        self.show_shape(index)

    @handler
    def set_class(self) -> None:
        """Give the selected shapes (or the shown one) the typed class label."""
        from napari_histoclip._geojson import record_class_colors
        from napari_histoclip._shapes import set_classes

        layer = self.shapes.value
        indices = sorted(layer.selected_data) if layer is not None else []
        if not indices and self._shown is not None:
            indices = [self._shown]
        if layer is None or not indices:
            raise UserError("Class: select one or more shapes first")
        cls = self.cls.value.strip()
        set_classes(layer, indices, [cls] * len(indices))
        # Its export colour, fixed now: a class map's on this slide if it has the class.
        record_class_colors(layer, [cls], self._class_map_colors())

    # --- internals ------------------------------------------------------------------------

    def _current(self) -> tuple[Any, int]:
        layer = self.shapes.value
        if layer is None or self._shown is None or self._shown >= len(layer.data):
            raise UserError("Caption: select a shape first")
        return layer, self._shown

    def _class_map_colors(self) -> dict[str, str]:
        from napari_histoclip._geojson import class_map_legend

        slide = self.ctx.slide_layer()
        info = slide_of(slide) if slide is not None else None
        want = info.path if info is not None else None
        colors: dict[str, str] = {}
        for lyr in self.ctx.viewer.layers:
            own = slide_of(lyr)
            if is_ours(lyr, LayerKind.CLASS_MAP) and (own is None or own.path == want):
                colors = {**class_map_legend(lyr), **colors}
        return colors

    def _source_choices(self, _widget: Any = None) -> list[str]:
        """The bundle always; the corpus when the chosen model embeds text (vision-language)."""
        choices = [CaptionSource.CAPTIONER.value]
        from backend.needs import Task

        if not hasattr(self, "ctx") or self.ctx.model_can(Task.TEXT_EMBED):
            choices.append(CaptionSource.CORPUS.value)
        return choices

    def _show_source(self, *_: Any) -> None:
        corpus = self.source.value == CaptionSource.CORPUS.value
        self.corpus.visible = corpus
        for widget in (self.captioner, self.beams, self.max_tokens):  # the decoder's settings
            widget.visible = not corpus

    def _choose_item(self, item: QListWidgetItem) -> None:
        self.choose(self.nbest_list.row(item))

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        slide = self.ctx.slide_layer() if hasattr(self, "ctx") else None
        info = slide_of(slide) if slide is not None else None
        want = info.path if info is not None else None
        from napari.layers import Shapes

        out = []
        for lyr in self.ctx.viewer.layers:
            # isinstance, not the type's name: a plugin's viewer hands out proxies of layers.
            if not isinstance(lyr, Shapes) or layer_record(lyr).kind == LayerKind.HITS:
                continue
            own = slide_of(lyr)
            # Shapes of another slide would caption the wrong pixels; unowned ones are allowed.
            if own is None or want is None or own.path == want:
                out.append((lyr.name, lyr))
        return out

    def stop_watching(self) -> None:
        """Stop following the regions layer's selection (the dock is closing)."""
        self._watch(None)

    def _watch(self, layer: Any) -> None:
        """Follow the selection of the chosen regions layer to show its captions."""
        if self._watched is not None:
            try:
                self._watched.selected_data.events.items_changed.disconnect(self._on_selection)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._watched = layer
        if layer is not None:
            layer.selected_data.events.items_changed.connect(self._on_selection)

    def _on_selection(self, event: Any = None) -> None:
        layer = self.shapes.value
        selected = sorted(layer.selected_data) if layer is not None else []
        if selected:
            self.show_shape(selected[0])
