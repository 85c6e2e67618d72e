"""Zero-shot tab: class prompts (or a trained classifier) to a class map and probability maps;
a text query to a heatmap.

A trained classifier (a CLIP-IT student, a saved few-shot head) is offered here as a second
*label source* beside the text prompts, not in a tab of its own: its result is the same class
map with the same probability layers, legend, "unknown" threshold, whole-slide-or-shape scope,
export and Refine path, so only where the labels come from differs. A tab of its own would
repeat every one of those controls and split one task ("label this slide") over two tabs.
The Refine tab's "Apply classifier" stays for applying the bundle it has just saved.
"""

from __future__ import annotations

import html
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, SpinBox, TextEdit

from napari_histoclip._context import PromptSet
from napari_histoclip._layer_meta import LayerKind, layer_record, with_record
from napari_histoclip._layers import LegendEntry, class_map_layers, heatmap_layer, legend
from napari_histoclip._slide import slide_of
from napari_histoclip._viewer import HiddenLayer, add_layer_in_turns, hidden_layer, is_layer, replace_layers, selected_shape
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._paths import chosen_path
from napari_histoclip._widgets._prompts import PromptTable

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext

WHOLE_SLIDE = "whole slide"
SELECTED_SHAPE = "selected shape"
TEXT_PROMPTS = "text prompts"
CLASSIFIER = "a trained classifier"


def legend_html(entries: list[LegendEntry], *, shares: bool = True) -> str:
    """The legend as rich text: a colour swatch, the class and (``shares``) its share of the tissue."""
    rows = "".join(
        f'<tr><td style="background-color:{e.color}">&nbsp;&nbsp;&nbsp;&nbsp;</td>'
        f"<td>&nbsp;{html.escape(e.label)}</td>"
        + (f"<td align='right'>&nbsp;{100 * e.fraction:.0f} %</td>" if shares else "") + "</tr>"
        for e in entries
    )
    return f"<table cellspacing='2'>{rows}</table>"


def result_layers(result: Any, info: Any, colors: Sequence[str], region: bool, shown: str | None = None) -> list[Any]:
    """A zero-shot result's layer data (``_layers.class_map_layers``), marked whole-slide or
    region in their layer records. Pure: runs in the task's worker too."""
    new = class_map_layers(result, info, colors, region=region, shown=shown)
    for _, kwargs, _ in new:
        kwargs["metadata"] = with_record(kwargs["metadata"], region=region)
    return new


class ZeroShotPanel(Container):
    """Class prompts, templates and an unknown threshold; results as layers with a legend."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        self._shown: list[Any] = []  # the layers of the result shown last
        self.source = ComboBox(label="Labels from", choices=[TEXT_PROMPTS, CLASSIFIER], value=TEXT_PROMPTS,
                               tooltip="the classes of the map: text prompts (zero-shot), or a trained classifier bundle")
        self.classifier = FileEdit(label="Classifier", mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
                                   tooltip="a classifier bundle folder (CLIP-IT student or saved from Refine); "
                                           "on a server, the bundle's name there")
        self.prompts = PromptTable()
        self.templates = TextEdit(
            label="Templates",
            value="",
            tooltip="one per line with {} for the class, e.g. 'an H&E image of {}'; empty: the defaults",
        )
        self.templates.native.setPlaceholderText("empty: default templates\ne.g. an H&E image of {}.")
        self.templates.native.setMaximumHeight(60)
        self.threshold = FloatSpinBox(
            label="Unknown below", value=0.0, min=0.0, max=1.0, step=0.05,
            tooltip="tiles whose best class probability is below this are 'unknown' (0: off)",
        )
        self.scope = ComboBox(label="Where", choices=[WHOLE_SLIDE, SELECTED_SHAPE], value=WHOLE_SLIDE)
        self.run_button = PushButton(text="Label slide")
        self.legend = Label(value="")
        from napari_histoclip._widgets._probability import ProbabilityPicker

        self.probability = ProbabilityPicker(ctx)  # the class the one probability layer shows
        self.query = LineEdit(label="Text query", value="", tooltip="e.g. 'tumor cells with mitoses'")
        self.heatmap_button = PushButton(text="Heatmap")
        # Slide-level answers (backend.tasks.slide_zero_shot): the verdict, and a cohort's triage
        from napari_histoclip._widgets._slide_level import TriageBox, VerdictBox

        self.top_k = SpinBox(label="Top-k tiles", value=50, min=1, max=10_000,
                             tooltip="whole-slide answer: each class's score is the mean of its k best tiles (MI-Zero)")
        self.slide_button = PushButton(text="Whole-slide answer")
        self.verdict = VerdictBox(ctx)
        self.triage = TriageBox(ctx, self.slide_request)
        super().__init__(
            widgets=[self.source, self.classifier, self.templates, self.threshold, self.scope, self.run_button,
                     self.legend, self.probability, self.query, self.heatmap_button, self.top_k, self.slide_button, self.verdict,
                     self.triage],
            labels=True,
        )
        self.native.layout().insertWidget(1, self.prompts)
        self.native.layout().addStretch(1)
        self.source.changed.connect(self._source_changed)
        self.classifier.changed.connect(self._classifier_changed)
        self._source_changed()
        self.run_button.changed.connect(self.run)
        self.heatmap_button.changed.connect(self.run_heatmap)
        self.query.native.returnPressed.connect(self.run_heatmap)
        self.slide_button.changed.connect(self.run_slide)

    # --- handlers -------------------------------------------------------------------------

    @handler
    def run(self) -> None:
        """Label the slide (or the selected shape) with the prompts or the classifier; replaces
        earlier results."""
        from backend.api import ZeroShotRequest

        if self.source.value == CLASSIFIER:
            return self.run_classifier()
        slide_layer, info = self.ctx.require_slide()
        labels, synonyms, templates, colors = self._prompt_set()
        region = self._region(slide_layer) if self.scope.value == SELECTED_SHAPE else None
        request = ZeroShotRequest(
            slide=self.ctx.slide_ref(info),
            model=self.ctx.model_name,
            labels=tuple(labels),
            synonyms=synonyms,
            templates=templates,
            unknown_threshold=self.threshold.value or None,
            region=region,
        )
        backend, model = self.ctx.backend, request.model

        def work(progress: Any, cancel: Any) -> tuple[Any, list[HiddenLayer]]:
            result = backend.zero_shot(request, progress=progress, cancel=cancel)
            # new layers' models made here, off the UI thread (used when the slide has none to update)
            return result, [hidden_layer(d) for d in result_layers(result, info, colors, region is not None)]

        def done(out: tuple[Any, list[HiddenLayer]]) -> Iterator[None]:
            result, made = out
            self.ctx.warn_random(result, model)
            return self.show_result_steps(result, info, colors, region is not None, made=made)

        self.ctx.run(f"Zero-shot on {info.name}", work, done)

    @handler
    def run_classifier(self) -> None:
        """Label the slide (or the selected shape) with the chosen classifier bundle; its map
        carries the bundle (its record's ``classifier``), so Refine then refines that classifier."""
        from napari_histoclip._widgets._apply_classifier import apply_classifier

        path = self._classifier_path()
        if not path:
            raise UserError("Classifier: choose the folder of a classifier bundle (or type its name on the server)")
        slide_layer, info = self.ctx.require_slide()
        region = self._region(slide_layer) if self.scope.value == SELECTED_SHAPE else None
        apply_classifier(self.ctx, info, path, region=region, unknown_threshold=self.threshold.value or None)

    def show_result(self, result: Any, info: Any, colors: list[str], region: bool) -> list[Any]:
        """Put a zero-shot result on the viewer, replacing the previous one of this slide."""
        steps = self.show_result_steps(result, info, colors, region)
        for _ in steps:
            pass
        return self._shown

    def show_result_steps(self, result: Any, info: Any, colors: list[str], region: bool,
                          made: Sequence[HiddenLayer] | None = None) -> Generator[None, None, list[Any]]:
        """:meth:`show_result` as steps (a generator returning the layers, also left in
        ``self._shown``): when
        the slide has no result layers to update in place, the class map is inserted, shown,
        then the hidden probability layer inserted, then the class map made active again, each
        in a turn of the event loop of its own, so that the UI repaints between them (adding a
        napari layer is slow: see ``add_layer_in_turns`` and ``TaskRunner._show_in_steps``).
        ``made``: those new layers, made by :func:`result_layers` and ``hidden_layer`` in the
        task's worker."""

        def stale(layer: Any) -> bool:
            record = layer_record(layer)
            return (
                record.slide is not None and record.slide.path == info.path
                and record.kind in (LayerKind.CLASS_MAP, LayerKind.PROBABILITY)
                and record.region == region
            )

        viewer = self.ctx.viewer
        fresh = not any(stale(lyr) for lyr in viewer.layers)
        pending: list[HiddenLayer] = []
        if fresh:  # the class map inserted, then shown, in turns of their own
            pending = list(made) if made is not None else [hidden_layer(d) for d in result_layers(result, info, colors, region)]
            layers = [(yield from add_layer_in_turns(viewer, pending[0]))]
        else:
            # the class the user was looking at stays shown when the new result has it
            shown = next((lyr.metadata.get("label") for lyr in viewer.layers
                          if stale(lyr) and layer_record(lyr).kind == LayerKind.PROBABILITY), None)
            layers = replace_layers(viewer, result_layers(result, info, colors, region, shown), stale)
        self._shown = layers
        self.legend.value = legend_html(legend(result.labels, colors, result.class_map))
        if not region:  # the slide's shapes export their classes in the map's colours
            from napari_histoclip._geojson import adopt_map_colors, class_map_legend

            for lyr in self.ctx.viewer.layers:
                own = slide_of(lyr)
                if is_layer(lyr, "Shapes") and own is not None and own.path == info.path:
                    adopt_map_colors(lyr, class_map_legend(layers[0]))
        # The class map is the layer to hover: its status line names the class.
        viewer.layers.selection.active = layers[0]
        if fresh:
            for hidden in pending[1:]:  # the hidden probability layer, in a turn of the event loop of its own
                yield
                layers.append((yield from add_layer_in_turns(viewer, hidden)))
            if len(layers) > 1:  # inserted, it became the active layer: the class map is again
                yield
                viewer.layers.selection.active = layers[0]
        if len(layers) > 1:  # a map of no class yet (marks alone) has no probability layer
            self.probability.follow(layers[-1])
        return layers

    @handler
    def run_heatmap(self) -> None:
        """Similarity of every tile to a text query, as a heatmap layer."""
        from backend.api import HeatmapRequest

        _, info = self.ctx.require_slide()
        query = self.query.value.strip()
        if not query:
            raise UserError("Text query: type what to look for, e.g. 'necrosis'")
        request = HeatmapRequest(self.ctx.slide_ref(info), self.ctx.model_name, query)
        backend, model = self.ctx.backend, request.model

        def done(result: Any) -> None:
            self.ctx.warn_random(result, model)
            data = heatmap_layer(result, info)
            name = data[1]["name"]
            (layer,) = replace_layers(self.ctx.viewer, [data], lambda lyr: lyr.name == name)
            layer.colorbar.visible = True  # the colour scale: which cosine a colour means

        self.ctx.run(f"Heatmap '{query}'", lambda progress, cancel: backend.heatmap(
            request, progress=progress, cancel=cancel), done)

    def slide_request(self) -> Any:
        """The whole-slide request of the current prompts (or classifier), top-k and threshold;
        its slide is left empty (the caller sets it)."""
        from backend.api import SlideRef, SlideZeroShotRequest

        k, threshold = int(self.top_k.value), self.threshold.value or None
        if self.source.value == CLASSIFIER:
            path = self._classifier_path()
            if not path:
                raise UserError("Classifier: choose the folder of a classifier bundle (or type its name on the server)")
            return SlideZeroShotRequest(SlideRef(""), classifier=path, k=k, unknown_threshold=threshold)
        labels, synonyms, templates, _ = self._prompt_set()
        return SlideZeroShotRequest(SlideRef(""), self.ctx.model_name, tuple(labels), synonyms, templates,
                                    k=k, unknown_threshold=threshold)

    @handler
    def run_slide(self) -> None:
        """One answer for the whole slide: the verdict line and its evidence tiles."""
        from dataclasses import replace

        _, info = self.ctx.require_slide()
        request = replace(self.slide_request(), slide=self.ctx.slide_ref(info))
        backend = self.ctx.backend

        def done(result: Any) -> None:
            self.ctx.warn_random(result, request.model or request.classifier)
            self.verdict.show_result(result, info)

        self.ctx.run(f"Whole-slide answer for {info.name}", lambda progress, cancel: backend.slide_zero_shot(
            request, progress=progress, cancel=cancel), done)

    # --- internals ------------------------------------------------------------------------

    def _classifier_path(self) -> str:
        """The chosen classifier bundle (a folder, or a bundle's name on a server), "" for none."""
        path = chosen_path(self.classifier)
        return "" if path is None else str(path)

    def _source_changed(self, *_: Any) -> None:
        """Show the controls of the chosen label source (prompts and templates, or the bundle)."""
        prompts = self.source.value == TEXT_PROMPTS
        self.prompts.setVisible(prompts)
        self.templates.visible = prompts
        self.classifier.visible = not prompts
        self.legend.value = ""
        if not prompts:
            self._classifier_changed()

    def _classifier_changed(self, *_: Any) -> None:
        """The chosen bundle's classes as the legend, before any run (read from its manifest)."""
        from napari_histoclip._widgets._apply_classifier import bundle_classes

        path = self._classifier_path()
        classes = bundle_classes(path) if path else None
        if classes is None:
            self.legend.value = "" if not path else f"{html.escape(path)}: classes shown after the first run"
            return
        entries = [LegendEntry(i + 1, name, color, 0.0) for i, (name, color) in enumerate(classes)]
        self.legend.value = legend_html(entries, shares=False)

    def prompt_set(self) -> PromptSet:
        """The prompts as typed (not checked): labels, synonyms, templates, colours and the
        unknown threshold."""
        rows = self.prompts.rows()
        return PromptSet(
            labels=tuple(r.label for r in rows),
            synonyms=tuple(r.synonyms for r in rows) if any(r.synonyms for r in rows) else (),
            templates=self._templates(),
            colors=tuple(r.color for r in rows),
            unknown_threshold=self.threshold.value or None,
        )

    def _prompt_set(self) -> tuple[list[str], tuple[tuple[str, ...], ...], tuple[str, ...], list[str]]:
        """The prompt table's labels, synonyms, templates and colours, checked by the backend's
        own check before any work."""
        from backend.tasks.zero_shot import check_prompts

        prompts = self.prompt_set()
        labels = list(prompts.labels)
        check_prompts(labels, prompts.synonyms, prompts.templates)
        return labels, prompts.synonyms, prompts.templates, list(prompts.colors)

    def _templates(self) -> tuple[str, ...]:
        """The template lines typed (blank lines skipped; empty: the backend's defaults)."""
        return tuple(t.strip() for t in self.templates.value.splitlines() if t.strip())

    def _region(self, slide_layer: Any) -> Any:
        """The selected shape of the active Shapes layer, as a region on the slide."""
        from napari_histoclip._shapes import shape_regions

        layer, index = selected_shape(self.ctx.viewer, "Where", slide_of(slide_layer))
        return shape_regions(layer, slide_layer, [index])[0]
