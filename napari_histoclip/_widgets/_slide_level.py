"""Slide-level answers in the dock: the whole-slide verdict with its evidence tiles, the cohort
triage list (Zero-shot tab), and "slides like this one" (Find similar tab).

Thin widgets over the ``Backend``: :class:`VerdictBox` shows a
:class:`backend.api.SlideZeroShotResult` (a verdict line, the evidence tiles listed and outlined
on the slide; a click frames a tile as a search hit is framed); :class:`TriageBox` fills a
sortable table of a cohort's verdicts (one ``slide_zero_shot`` per slide, through
:func:`backend.triage.triage`) and opens a slide on click; :class:`SlideLikeBox` lists
``search_slides`` hits and opens one on click. The request is built by the panel that owns the
prompts (the Zero-shot tab) or the index (Find similar); these widgets only show and open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import Container, FileEdit, Label, PushButton
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem, QTableWidget, QTableWidgetItem

from napari_histoclip._layer_meta import LayerKind, is_ours
from napari_histoclip._layers import hit_shapes_layer
from napari_histoclip._slide import SlideInfo, find_slide_layer, slide_of
from napari_histoclip._viewer import add_layer_data, frame_box, replace_layers, show_only_slide
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._paths import chosen_path

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext

EVIDENCE_KIND = LayerKind.HITS  # evidence tiles are outlined as search hits are (one outline layer per slide)


def open_slide_layer(ctx: DockContext, path: str) -> tuple[Any, SlideInfo] | None:
    """The slide at ``path`` shown in the viewer (opened by the plugin's reader when it is not
    yet), the others hidden, and chosen in the dock; ``(layer, SlideInfo)``, or None when the
    reader could not open it (it has said why)."""
    from napari_histoclip._reader import read_slide_layer

    viewer = ctx.viewer
    layer = find_slide_layer(viewer.layers, path)
    if layer is None:
        data = read_slide_layer(path)
        if data is None:
            return None
        layer = add_layer_data(viewer, data)
    info = slide_of(layer)
    if info is None:
        raise UserError(f"{path}: its layer {layer.name!r} is not a slide the plugin opened")
    show_only_slide(viewer, info)
    ctx.select_slide(layer)
    return layer, info


def verdict_text(result: Any) -> str:
    """``class (p %), runner-up: class (p %)`` and how it was pooled."""
    best, second = result.predicted, result.runner_up
    p_best = "" if best not in result.labels else f" ({100 * result.probability(best):.0f} %)"
    how = f"top-{result.n_pooled}" if result.pooling != "mean" else "mean"
    return (f"Whole slide: {best}{p_best}, runner-up: {second} ({100 * result.probability(second):.0f} %); "
            f"{how} of {result.n_tiles} tiles")


class VerdictBox(Container):
    """The whole-slide verdict and its evidence tiles (click: outline and frame the tile)."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        self.verdict = Label(value="")
        self.evidence = QListWidget()
        self.evidence.setMinimumHeight(120)
        self.evidence.setVisible(False)  # takes no room from the tab until there is a verdict
        super().__init__(widgets=[self.verdict], labels=False)
        self.native.layout().addWidget(self.evidence)
        self.native.setVisible(False)  # no room taken from the tab until there is a verdict
        self.evidence.itemClicked.connect(lambda item: self.open_evidence(self.evidence.row(item)))
        self.result: Any = None
        self.info: SlideInfo | None = None

    def show_result(self, result: Any, info: SlideInfo) -> None:
        """Show ``result`` for the slide ``info``: the verdict, the evidence list, the outlines."""
        self.result, self.info = result, info
        self.native.setVisible(True)
        self.verdict.value = verdict_text(result)
        self.evidence.clear()
        self.evidence.setVisible(bool(result.evidence))
        for e in result.evidence:
            x, y, w, _ = e.box
            item = QListWidgetItem(f"{e.label} #{e.rank + 1}  {e.score:.3f}  at ({x:.0f}, {y:.0f}), {w:.0f} px")
            item.setToolTip("click to go there")
            self.evidence.addItem(item)
        self._outline(result, info)

    def _outline(self, result: Any, info: SlideInfo) -> list[Any]:
        """Outline every evidence tile on its slide (one layer, replacing earlier outlines)."""
        boxes = [e.box for e in result.evidence]
        texts = [f"{e.label} #{e.rank + 1}" for e in result.evidence]
        shapes = hit_shapes_layer(boxes, info, texts)
        path = info.path
        return replace_layers(self.ctx.viewer, [shapes],
                              lambda lyr: is_ours(lyr, EVIDENCE_KIND, path))

    @handler
    def open_evidence(self, row: int) -> None:
        """Show the slide, select the tile's outline and frame it."""
        result, info = self.result, self.info
        if result is None or info is None or not 0 <= row < len(result.evidence):
            raise UserError(f"Whole slide: no evidence tile number {row + 1}")
        opened = open_slide_layer(self.ctx, info.path)
        if opened is None:
            return
        layer = self._outline(result, info)[0]
        layer.selected_data = {row}
        frame_box(self.ctx.viewer, result.evidence[row].box, info)


class TriageBox(Container):
    """A cohort's slides with their verdicts, sortable by any column; a click opens the slide.

    ``request`` builds the :class:`backend.api.SlideZeroShotRequest` of the current prompts
    (its slide is replaced per slide of the cohort).
    """

    def __init__(self, ctx: DockContext, request: Callable[[], Any]) -> None:
        self.ctx, self._request = ctx, request
        self.cohort = FileEdit(label="Cohort", mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
                               tooltip="a folder of slides, or a cohort index")
        self.run_button = PushButton(text="Triage cohort")
        row = Container(widgets=[self.cohort, self.run_button], labels=True, layout="horizontal")
        row.margins = (0, 0, 0, 0)
        super().__init__(widgets=[row], labels=False)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMinimumHeight(160)
        self.table.setVisible(False)  # takes no room from the tab until a cohort is triaged
        self.native.layout().addWidget(self.table)
        self.run_button.changed.connect(self.run)
        self.table.cellClicked.connect(lambda row, _col: self.open_row(row))

    @handler
    def run(self) -> None:
        """Answer every slide of the cohort (embedding those not cached), then fill the table."""
        from backend.triage import cohort_slides, triage

        folder = chosen_path(self.cohort)
        if folder is None or not folder.exists():
            raise UserError("Cohort: choose a folder of slides or a cohort index")
        slides, index_model, _, index_tiles = cohort_slides([str(folder)])
        if not slides:
            raise UserError(f"{folder}: no slides in it")
        request = self._request()
        if index_model is not None:  # an index: its slides were embedded with its model and tiles
            from dataclasses import replace

            model = request.model if request.classifier else (request.model or index_model)
            request = replace(request, model=model, tiles=index_tiles)
        backend = self.ctx.backend

        def work(progress: Any, cancel: Any) -> list[Any]:
            return list(triage(backend, slides, request, progress=progress, cancel=cancel))

        self.ctx.run(f"Triage of {len(slides)} slides", work, self.show_rows)

    def show_rows(self, rows: list[Any]) -> None:
        """Fill the table: slide, verdict, then each class's probability (sortable numbers)."""
        labels = next((r.labels for r in rows if not r.error), ())
        headers = ["slide", "verdict", *(f"p({lab})" for lab in labels)]
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(rows))
        self.table.setVisible(True)
        for i, r in enumerate(rows):
            name = QTableWidgetItem(r.slide_name)
            name.setData(Qt.ItemDataRole.UserRole, r.path)
            name.setToolTip(r.error or r.path)
            self.table.setItem(i, 0, name)
            self.table.setItem(i, 1, QTableWidgetItem(r.predicted if not r.error else "error"))
            for c, p in enumerate(r.probabilities):
                cell = QTableWidgetItem()
                cell.setData(Qt.ItemDataRole.DisplayRole, round(float(p), 4))  # a number: sorts as one
                self.table.setItem(i, 2 + c, cell)
        self.table.setSortingEnabled(True)

    def sort_by(self, label: str, descending: bool = True) -> None:
        """Sort the rows by the probability of class ``label`` (as a click on its header does)."""
        items = (self.table.horizontalHeaderItem(c) for c in range(self.table.columnCount()))
        headers = [item.text() if item is not None else "" for item in items]
        if f"p({label})" not in headers:
            raise UserError(f"Triage: no class {label!r} in the table ({', '.join(headers[2:])})")
        order = Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder
        self.table.sortItems(headers.index(f"p({label})"), order)

    def path_at(self, row: int) -> str:
        """The slide path of table row ``row`` (as shown, after any sorting)."""
        item = self.table.item(row, 0)
        if item is None:
            raise UserError(f"Triage: no row {row + 1}")
        return str(item.data(Qt.ItemDataRole.UserRole))

    @handler
    def open_row(self, row: int) -> None:
        """Open the slide of table row ``row`` (as shown, after any sorting)."""
        if not 0 <= row < self.table.rowCount():
            raise UserError(f"Triage: no row {row + 1}")
        open_slide_layer(self.ctx, self.path_at(row))


class SlideLikeBox(Container):
    """"Slides like this one": the index's slides most like the current slide; click opens one.

    ``index`` returns the chosen cohort index path (or "" when none is chosen).
    """

    def __init__(self, ctx: DockContext, index: Callable[[], str], k: Callable[[], int]) -> None:
        self.ctx, self._index, self._k = ctx, index, k
        self.button = PushButton(text="Slides like this one")
        self.results = QListWidget()
        self.results.setMinimumHeight(100)
        self.results.setVisible(False)  # takes no room from the hit list until there are results
        super().__init__(widgets=[self.button], labels=False)
        self.native.layout().addWidget(self.results)
        self.button.changed.connect(self.search)
        self.results.itemClicked.connect(lambda item: self.open_hit(self.results.row(item)))
        self.hits: list[Any] = []

    @handler
    def search(self) -> None:
        from backend.api import SlideSearchRequest

        _, info = self.ctx.require_slide()
        index = self._index()
        if not index:
            raise UserError("Index: choose a cohort index folder, or build one from a folder of slides")
        request = SlideSearchRequest(index, self.ctx.slide_ref(info), k=int(self._k()))
        backend = self.ctx.backend
        self.ctx.run(f"Slides like {info.name}", lambda progress, cancel: backend.search_slides(
            request, progress=progress, cancel=cancel), self.show_hits)

    def show_hits(self, result: Any) -> None:
        self.hits = list(result.hits)
        self.results.clear()
        self.results.setVisible(True)
        for rank, h in enumerate(self.hits, 1):
            item = QListWidgetItem(f"#{rank}  {h.score:.3f}  {h.slide_name} ({h.n_tiles} tiles)")
            item.setToolTip(f"{h.slide_path}\nclick to open")
            self.results.addItem(item)

    @handler
    def open_hit(self, row: int) -> None:
        if not 0 <= row < len(self.hits):
            raise UserError(f"Slides like this one: no result number {row + 1}")
        open_slide_layer(self.ctx, self.hits[row].slide_path)
