"""Find-similar tab: build or pick a cohort index, query by shape or text, browse the hits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, Container, FileEdit, LineEdit, PushButton, SpinBox
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem

from napari_histoclip._layer_meta import LayerKind, is_ours
from napari_histoclip._layers import hit_shapes_layer
from napari_histoclip._reader import open_slide_quietly
from napari_histoclip._viewer import frame_box, replace_layers, selected_shape
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._paths import chosen_path

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext

THUMB = 96  # px, the result list's thumbnails


@dataclass(frozen=True)
class ShownHit:
    """A search hit with its thumbnail (``(h, w, 3)`` uint8, or None if unreadable)."""

    hit: Any
    thumbnail: np.ndarray | None


def slides_in(folder: str | Path) -> list[str]:
    """The slides in ``folder`` by the backend's one rule (``backend.slides.expand_slides``:
    slide files and DICOM folders, one slide each), or [] when it holds none."""
    from backend.errors import InputError
    from backend.slides import expand_slides

    try:
        return expand_slides([folder])
    except InputError:
        return []


def hit_thumbnails(hits: Any, size: int = THUMB, cancel: Any = None) -> list[ShownHit]:
    """Read a thumbnail of each hit box from its slide (in the worker: this reads pixels);
    a set ``cancel`` event stops it with ``CancelledError``."""
    from backend.errors import CancelledError

    opened: dict[str, Any] = {}
    out = []
    try:
        for i, hit in enumerate(hits):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"search: cancelled while reading thumbnails ({i} of {len(hits)})")
            thumb = None
            try:
                slide = opened.get(hit.slide_path) or open_slide_quietly(hit.slide_path)
                opened[hit.slide_path] = slide
                x, y, w, h = hit.box
                level = slide.best_level_for_downsample(max(w, h) / size)
                ds = slide.level_downsamples[level]
                thumb = slide.read_region((int(x), int(y)), level, (max(1, round(w / ds)), max(1, round(h / ds))))
            except Exception:  # noqa: BLE001 - a missing thumbnail must not lose the hit
                thumb = None
            out.append(ShownHit(hit, thumb))
    finally:
        for slide in opened.values():
            slide.close()
    return out


def _icon(pixels: np.ndarray | None) -> QIcon:
    if pixels is None:
        return QIcon()
    rgb = np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    image = QImage(rgb.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(image).scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio,
                                                 Qt.TransformationMode.SmoothTransformation))


def build_with_user_mpp(
    backend: Any,
    slides: list[str],
    index: str,
    model: str,
    remembered: dict[str, float],
    given: dict[str, float],
    progress: Any,
    cancel: Any,
) -> tuple[Any, list[str]]:
    """Build the index of ``slides`` (in a worker), the slides without mpp with their user
    µm/px (``IndexRequest.slide_mpp``, one request per value); returns the last ``IndexInfo``
    with every request's failures, and the slides left out for want of a µm/px."""
    from dataclasses import replace

    from backend.api import IndexRequest, Progress
    from napari_histoclip._mpp import plan_index

    groups, missing = plan_index(slides, remembered, given, cancel)
    # Slides with their own mpp first (slide_mpp None), then one request per user value.
    ordered = sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0.0))
    total = sum(len(paths) for _, paths in ordered)
    info, failed, offset = None, [], 0
    for mpp, paths in ordered:
        def relay(p: Any, base: int = offset, n: int = len(paths)) -> None:
            # one bar over every request: a request counts its own slides
            progress(Progress(base + p.done, total, p.stage) if p.total == n else p)

        request = IndexRequest(tuple(paths), index, model, slide_mpp=mpp)
        info = backend.build_index(request, progress=relay, cancel=cancel)
        failed.extend(info.failed)
        offset += len(paths)
    if info is None:  # every slide lacks a µm/px: nothing to build
        from backend.errors import InputError
        from napari_histoclip._mpp import FIELD

        raise InputError(f"{Path(index).name}: nothing to index: no µm/px in the metadata of "
                         f"{', '.join(Path(p).name for p in missing)}; open each, give its µm/px in {FIELD}, "
                         "then build again")
    return replace(info, failed=tuple(failed)), missing


class SearchPanel(Container):
    """Index choice and building, queries, and a clickable result list."""

    def __init__(self, ctx: DockContext) -> None:
        self.ctx = ctx
        # not ``index``: a Container is a sequence of its widgets, whose ``index`` it would hide
        self.index_folder = FileEdit(label="Index", mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
                                     tooltip="a cohort index folder")
        self.folder = FileEdit(label="Slides folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=None,
                               tooltip="index every slide in it")
        self.build_button = PushButton(text="Build index from folder")
        self.k = SpinBox(label="Hits", value=12, min=1, max=200)
        self.exclude = CheckBox(text="Skip the query's own slide", value=True)
        self.text = LineEdit(label="Text query", value="")
        self.text_button = PushButton(text="Search text")
        self.shape_button = PushButton(text="Search selected shape")
        self.results = QListWidget()
        self.results.setIconSize(QSize(THUMB, THUMB))
        self.results.setMinimumHeight(220)
        self.results.setSpacing(2)
        super().__init__(
            widgets=[self.index_folder, self.folder, self.build_button, self.k, self.exclude, self.text,
                     self.text_button, self.shape_button],
            labels=True,
        )
        self.native.layout().addWidget(self.results)
        # why a search returned fewer hits than asked (the backend's SearchResult.note)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setVisible(False)
        self.native.layout().addWidget(self.note)
        from napari_histoclip._widgets._slide_level import SlideLikeBox

        self.like = SlideLikeBox(ctx, self._index_path, lambda: int(self.k.value))  # "slides like this one"
        self.native.layout().addWidget(self.like.native)
        self.build_button.changed.connect(self.build_index)
        self.text_button.changed.connect(self.search_text)
        self.text.native.returnPressed.connect(self.search_text)
        self.shape_button.changed.connect(self.search_shape)
        self.results.itemClicked.connect(lambda item: self.open_hit(self.results.row(item)))
        self.hits: list[ShownHit] = []

    # --- handlers -------------------------------------------------------------------------

    @handler
    def build_index(self) -> None:
        """Embed every slide in the folder into the index (resumable), with progress.

        Slides without mpp go in with the µm/px the user gave for them (open in the viewer, or
        remembered from before); those without one are left out, and the user is told which and
        where to give it (a rebuild adds them: slides already indexed are skipped).
        """
        from napari_histoclip._mpp_memory import user_mpp_of_open_slides
        from napari_histoclip._settings import load_settings

        folder = chosen_path(self.folder)
        if folder is None or not folder.is_dir():
            raise UserError("Slides folder: choose a folder of slides to index")
        slides = slides_in(folder)
        if not slides:
            raise UserError(f"{folder}: no slide files in it")
        index = chosen_path(self.index_folder) or folder / "histoclip-index"
        model, backend = self.ctx.model_name, self.ctx.backend
        remembered, given = dict(load_settings().slide_mpp), user_mpp_of_open_slides(self.ctx.viewer.layers)

        def work(progress: Any, cancel: Any) -> tuple[Any, list[str]]:
            return build_with_user_mpp(backend, slides, str(index), model, remembered, given, progress, cancel)

        def done(out: tuple[Any, list[str]]) -> None:
            from napari.utils.notifications import show_info, show_warning

            from napari_histoclip._mpp import FIELD

            info, missing = out
            self.index_folder.value = info.index_path
            show_info(f"{Path(info.index_path).name}: {info.n_slides} slides, {info.n_vectors} tiles indexed")
            for path, why in getattr(info, "failed", ()):
                show_warning(f"{Path(path).name}: left out of the index: {why}")
            if missing:
                names = ", ".join(Path(p).name for p in missing)
                show_warning(f"left out of the index, no µm/px in their metadata: {names}; open each, give its "
                             f"µm/px in {FIELD}, then build again (the slides indexed are kept)")

        self.ctx.run(f"Indexing {len(slides)} slides", work, done)

    @handler
    def search_text(self) -> None:
        """Tiles of the cohort closest to a text query."""
        query = self.text.value.strip()
        if not query:
            raise UserError("Text query: type what to find, e.g. 'mitotic figures'")
        self._search(text=query)

    @handler
    def search_shape(self) -> None:
        """Regions of the cohort like the selected shape on the current slide."""
        from napari_histoclip._shapes import shape_regions

        slide_layer, info = self.ctx.require_slide()
        layer, index = selected_shape(self.ctx.viewer, "Search", info)
        (region,) = shape_regions(layer, slide_layer, [index])
        self._search(slide=self.ctx.slide_ref(info), region=region)

    def _search(self, **query: Any) -> None:
        from backend.api import SearchRequest

        index = chosen_path(self.index_folder)
        if index is None or not index.exists():
            raise UserError("Index: choose a cohort index folder, or build one from a folder of slides")
        request = SearchRequest(
            str(index), model=self.ctx.model_name, k=int(self.k.value),
            exclude_query_slide=bool(self.exclude.value), **query,
        )
        backend = self.ctx.backend

        def work(progress: Any, cancel: Any) -> tuple[list[ShownHit], str]:
            result = backend.search(request, progress=progress, cancel=cancel)
            return hit_thumbnails(result.hits, cancel=cancel), result.note

        self.ctx.run("Searching", work, lambda out: self.show_hits(*out))

    def _index_path(self) -> str:
        """The chosen index folder, or "" when none (or one that is not there) is chosen."""
        index = chosen_path(self.index_folder)
        return "" if index is None or not index.exists() else str(index)

    def show_hits(self, hits: list[ShownHit], note: str = "") -> None:
        """Fill the result list: thumbnail, score, slide and place; ``note`` (why fewer hits
        than asked came back) shows under the list."""
        from napari.utils.notifications import show_info

        self.note.setText(note)
        self.note.setVisible(bool(note))
        self.hits = list(hits)
        self.results.clear()
        for rank, shown in enumerate(self.hits, 1):
            h = shown.hit
            x, y, w, _ = h.box
            text = f"#{rank}  {h.score:.3f}\n{h.slide_name}\nat ({x:.0f}, {y:.0f}), {w:.0f} px"
            item = QListWidgetItem(_icon(shown.thumbnail), text)
            item.setToolTip(f"{h.slide_path}\nbox (x, y, w, h) = {tuple(round(v) for v in h.box)}; click to go there")
            self.results.addItem(item)
        if note:
            show_info(f"Search: {note}")
        elif not self.hits:
            show_info("Search: no hits (is the index empty, or only the query's own slide in it?)")

    @handler
    def open_hit(self, row: int) -> None:
        """Open the hit's slide if needed, outline the hit, centre and zoom the view on it."""
        if not 0 <= row < len(self.hits):
            raise UserError(f"Search: no result number {row + 1}")
        from napari_histoclip._widgets._slide_level import open_slide_layer

        hit = self.hits[row].hit
        viewer = self.ctx.viewer
        opened = open_slide_layer(self.ctx, hit.slide_path)
        if opened is None:
            return  # the reader has already said why
        _, info = opened
        same = [(i, s.hit) for i, s in enumerate(self.hits) if Path(s.hit.slide_path).resolve() == Path(info.path).resolve()]
        shapes = hit_shapes_layer([h.box for _, h in same], info, [f"#{i + 1} {h.score:.2f}" for i, h in same])
        new = replace_layers(viewer, [shapes], lambda lyr: is_ours(lyr, LayerKind.HITS, info.path))
        new[0].selected_data = {[i for i, _ in same].index(row)}
        frame_box(viewer, hit.box, info)
