"""A numpy test double of the ``Backend`` Protocol: deterministic maps, captions and hits.

Used where the real ``LocalBackend`` is not the point: error paths, cancellation and the
responsiveness test (its ``tile_delay`` sleeps in the worker like a model would compute).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.api import (
    Caption,
    CaptionRequest,
    CaptionResult,
    ClassifierInfo,
    ClassifyRequest,
    ClassSearchRequest,
    CorpusCaptionRequest,
    EmbedResult,
    EvidenceTile,
    GridGeometry,
    GroundingRequest,
    GroundingResult,
    HeatmapRequest,
    HeatmapResult,
    IndexInfo,
    IndexRequest,
    ModelInfo,
    Progress,
    ProgressCallback,
    RefineRequest,
    SaveClassifierRequest,
    SearchHit,
    SearchRequest,
    SearchResult,
    SlideHit,
    SlideRef,
    SlideSearchRequest,
    SlideSearchResult,
    SlideZeroShotRequest,
    SlideZeroShotResult,
    TileOptions,
    ZeroShotRequest,
    ZeroShotResult,
)
from backend.errors import CancelledError, InputError, ModelError, SlideNotFoundError

CLASSIFIER_FILE = "fake-classifier.json"  # what the fake's "classifier bundle" folder holds


def slide_size(path: str) -> tuple[int, int]:
    """Level-0 (width, height) of a TIFF-based slide, read with tifffile (no backend)."""
    import tifffile

    if not Path(path).exists():
        raise SlideNotFoundError(path, "no such file")
    with tifffile.TiffFile(path) as tf:
        h, w = tf.pages[0].shape[:2]
    return int(w), int(h)



def label_phase(label: str) -> int:
    """A per-label phase of the fake class fields, the same in every process (``hash(str)``
    is salted per process by PYTHONHASHSEED, so maps would differ between runs)."""
    return zlib.crc32(label.encode("utf-8")) % 7

@dataclass
class FakeBackend:
    """Implements ``backend.api.Backend`` with numpy.

    Attributes
    ----------
    tile: level-0 pixels per grid cell.
    tile_delay: seconds slept per tile while "embedding" (in the caller's thread).
    calls: names of the methods called, in order (tests assert on them).
    """

    tile: int = 448
    tile_delay: float = 0.0
    calls: list[str] = field(default_factory=list)
    embedded: set[str] = field(default_factory=set)
    fail_with: Exception | None = None
    closed: bool = False

    def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo("fake-clip", "test double", 8, "MIT", True, "deterministic numpy maps"),
            ModelInfo("fake-clip-2", "test double", 8, "MIT", True),
        ]

    # --- helpers ------------------------------------------------------------------------------

    def _geometry(self, path: str) -> GridGeometry:
        w, h = slide_size(path)
        rows, cols = -(-h // self.tile), -(-w // self.tile)
        half = (self.tile - 1) / 2
        return GridGeometry((rows, cols), (float(self.tile), float(self.tile)), (half, half))

    def _tissue(self, shape: tuple[int, int]) -> np.ndarray:
        mask = np.ones(shape, bool)
        mask[0, 0] = False  # one background cell, so "no tissue" is exercised
        return mask

    def embed_slide(
        self,
        slide: SlideRef,
        model: str,
        tiles: TileOptions = TileOptions(),
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EmbedResult:
        self.calls.append("embed_slide")
        if self.fail_with is not None:
            raise self.fail_with
        geom = self._geometry(slide.path)
        n = geom.shape[0] * geom.shape[1]
        cached = slide.path in self.embedded
        if not cached:
            for i in range(n):
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"{Path(slide.path).name}: embedding cancelled at tile {i}/{n}")
                if self.tile_delay:
                    time.sleep(self.tile_delay)
                if progress is not None:
                    progress(Progress(i + 1, n, "embedding"))
            self.embedded.add(slide.path)
        return EmbedResult(Path(slide.path).stem, model, n, geom, cached, True)

    def zero_shot(self, request: ZeroShotRequest, *, progress: ProgressCallback | None = None,
                  cancel: threading.Event | None = None) -> ZeroShotResult:
        self.calls.append("zero_shot")
        self.embed_slide(request.slide, request.model, request.tiles, progress=progress, cancel=cancel)
        return self._class_map(request.slide.path, tuple(request.labels), request.unknown_threshold)

    def _class_map(self, path: str, labels: tuple[str, ...], unknown_threshold: float | None) -> ZeroShotResult:
        """Smooth class fields that depend on the label text, so new prompts give a new map."""
        geom = self._geometry(path)
        rows, cols = geom.shape
        n = len(labels)
        r, c = np.mgrid[0:rows, 0:cols]
        logits = np.stack(
            [np.sin(r / 2.0 + label_phase(lab)) + np.cos(c / 3.0 + i) for i, lab in enumerate(labels)]
        ).astype(np.float32)
        e = np.exp(logits - logits.max(axis=0))
        probs = e / e.sum(axis=0)
        tissue = self._tissue((rows, cols))
        cm = (probs.argmax(axis=0) + 1).astype(np.int32)
        if unknown_threshold is not None:
            cm[probs.max(axis=0) < unknown_threshold] = n + 1
        cm[~tissue] = 0
        probs[:, ~tissue] = np.nan
        return ZeroShotResult(labels, cm, probs.astype(np.float32), geom, True)

    def heatmap(self, request: HeatmapRequest, *, progress=None, cancel=None) -> HeatmapResult:  # noqa: ANN001
        self.calls.append("heatmap")
        self.embed_slide(request.slide, request.model, request.tiles, progress=progress, cancel=cancel)
        geom = self._geometry(request.slide.path)
        rows, cols = geom.shape
        r, c = np.mgrid[0:rows, 0:cols]
        sim = (np.sin(r / 2.0) * np.cos(c / 2.0) * 0.3).astype(np.float32)
        sim[~self._tissue((rows, cols))] = np.nan
        return HeatmapResult(request.query, sim, geom, True)

    def caption(self, request: CaptionRequest, *, progress=None, cancel=None) -> CaptionResult:  # noqa: ANN001
        self.calls.append("caption")
        caps = []
        for i, region in enumerate(request.regions):
            x, y, w, h = region.bounds
            texts = tuple(
                f"{['tumour', 'stroma', 'fat'][(i + k) % 3]} region {i} at {x:.0f},{y:.0f} option {k}"
                for k in range(request.n_best)
            )
            caps.append(Caption(texts, tuple(-0.5 - k * 0.25 for k in range(request.n_best))))
            if progress is not None:
                progress(Progress(i + 1, len(request.regions), "captioning"))
        return CaptionResult(tuple(caps))

    def corpus_caption(self, request: CorpusCaptionRequest, *, progress=None, cancel=None) -> CaptionResult:  # noqa: ANN001
        """The corpus file's lines (a text corpus), rotated by region: n-best with line sources."""
        self.calls.append("corpus_caption")
        from backend.text.corpus import read_corpus_entries

        entries = read_corpus_entries(request.corpus, request.text_column, source_column=request.source_column,
                                      id_column=request.id_column)
        caps = []
        for i, _ in enumerate(request.regions):
            picked = [entries[(i + k) % len(entries)] for k in range(min(request.n_best, len(entries)))]
            caps.append(Caption(tuple(e.text for e in picked), tuple(0.3 - 0.01 * k for k in range(len(picked))),
                                tuple((e.ref,) for e in picked)))
            if progress is not None:
                progress(Progress(i + 1, len(request.regions), "captioning"))
        return CaptionResult(tuple(caps))

    def ground(self, request: GroundingRequest, *, progress=None, cancel=None) -> GroundingResult:  # noqa: ANN001
        """Support falling off from the region's centre (per phrase, from a corner of it)."""
        self.calls.append("ground")
        from backend.tasks.grounding import check_caption, top_indices
        from backend.text.phrases import noun_phrases

        caption = check_caption(request.caption)
        phrases = tuple(p.text for p in noun_phrases(caption)) if request.phrases else ()
        geom = self._geometry(request.slide.path)
        rows, cols = geom.shape
        x, y, w, h = request.region.bounds
        r, c = np.mgrid[0:rows, 0:cols]
        cy, cx = (r + 0.5) * self.tile, (c + 0.5) * self.tile
        inside = (cx >= x) & (cx <= x + w) & (cy >= y) & (cy <= y + h) & self._tissue((rows, cols))
        anchors = [(x + w / 2, y + h / 2)] + [((x, y), (x + w, y + h), (x + w, y), (x, y + h))[j % 4] for j in range(len(phrases))]
        maps = np.stack([np.where(inside, -np.hypot(cx - ax, cy - ay) / self.tile, np.nan) for ax, ay in anchors])
        cells = []
        for m in maps:
            flat = np.where(np.isfinite(m), m, -np.inf).ravel()
            idx = top_indices(flat, min(request.top_k, int(inside.sum())))
            cells.append(tuple((int(i // cols), int(i % cols)) for i in idx))
        return GroundingResult(caption, "leave-one-out" if request.captioner else "similarity", phrases,
                               maps.astype(np.float32), tuple(cells), geom, True)

    def build_index(self, request: IndexRequest, *, progress=None, cancel=None) -> IndexInfo:  # noqa: ANN001
        self.calls.append("build_index")
        n_vec = 0
        for i, s in enumerate(request.slides):
            res = self.embed_slide(SlideRef(s), request.model, request.tiles, cancel=cancel)
            n_vec += res.n_tiles
            if progress is not None:
                progress(Progress(i + 1, len(request.slides), "indexing"))
        Path(request.index_path).mkdir(parents=True, exist_ok=True)
        (Path(request.index_path) / "slides.txt").write_text("\n".join(request.slides))
        return IndexInfo(request.index_path, request.model, len(request.slides), n_vec)

    def search(self, request: SearchRequest, *, progress=None, cancel=None) -> SearchResult:  # noqa: ANN001
        self.calls.append("search")
        if cancel is not None and cancel.is_set():
            raise CancelledError("search cancelled")
        slides_file = Path(request.index_path) / "slides.txt"
        if not slides_file.is_file():
            from backend.errors import InputError

            raise InputError(f"{request.index_path}: not an index (no slides.txt)")
        slides = slides_file.read_text().splitlines()
        hits = []
        for k in range(request.k):
            path = slides[k % len(slides)]
            w, h = slide_size(path)
            x, y = (k * 311) % max(w - 448, 1), (k * 173) % max(h - 448, 1)
            hits.append(SearchHit(Path(path).stem, path, (float(x), float(y), 448.0, 448.0), 0.9 - 0.05 * k, 4))
        return SearchResult(tuple(hits))

    def slide_zero_shot(self, request: SlideZeroShotRequest, *, progress=None, cancel=None) -> SlideZeroShotResult:  # noqa: ANN001
        """The fake tile maps (as :meth:`zero_shot`) pooled by their top-k probability; evidence
        is each class's ``request.evidence`` best cells."""
        self.calls.append("slide_zero_shot")
        zs = ZeroShotRequest(request.slide, request.model or "fake-clip", request.labels, request.synonyms,
                             request.templates, None, None, request.tiles or TileOptions())
        tile_map = self.zero_shot(zs, progress=progress, cancel=cancel)
        self.calls.pop()  # the inner zero_shot is this call's, not the caller's
        geom = tile_map.geometry
        flat = tile_map.probabilities.reshape(len(request.labels), -1)
        cells = np.flatnonzero(~np.isnan(flat[0]))
        k = min(request.k, len(cells))
        scores = np.sort(flat[:, cells], axis=1)[:, ::-1][:, :k].mean(axis=1)
        probs = np.exp(10 * scores) / np.exp(10 * scores).sum()
        order = np.argsort(-probs, kind="stable")
        evidence = []
        for c, label in enumerate(request.labels):
            best = cells[np.argsort(-flat[c, cells], kind="stable")[: request.evidence]]
            for rank, i in enumerate(best):
                r, col = divmod(int(i), geom.shape[1])
                box = (col * self.tile, r * self.tile, self.tile, self.tile)
                evidence.append(EvidenceTile(label, tuple(float(v) for v in box), (r, col), float(flat[c, i]), rank))
        return SlideZeroShotResult(
            Path(request.slide.path).stem, tuple(request.labels), tuple(float(p) for p in probs),
            tuple(float(s) for s in scores), request.labels[order[0]], request.labels[order[1]], tuple(evidence),
            len(cells), k, request.pooling, True)

    def search_slides(self, request: SlideSearchRequest, *, progress=None, cancel=None) -> SlideSearchResult:  # noqa: ANN001
        """The index's slides (slides.txt), the query slide left out, in a fixed order."""
        self.calls.append("search_slides")
        slides_file = Path(request.index_path) / "slides.txt"
        if not slides_file.is_file():
            from backend.errors import InputError

            raise InputError(f"{request.index_path}: not an index (no slides.txt)")
        slides = [s for s in slides_file.read_text().splitlines()
                  if not (request.exclude_query_slide and Path(s).resolve() == Path(request.slide.path).resolve())]
        return SlideSearchResult(tuple(SlideHit(Path(s).stem, s, 0.9 - 0.1 * i, 4)
                                       for i, s in enumerate(slides[: request.k])))

    # --- classifiers and few-shot refinement: a "classifier bundle" is a folder holding a JSON --

    def _classifier(self, path: str) -> dict:
        """The fake classifier saved at ``path`` (see :meth:`save_classifier`)."""
        import json

        file = Path(path) / CLASSIFIER_FILE
        if not file.is_file():
            raise ModelError(f"{path}: not a classifier bundle (no {CLASSIFIER_FILE})")
        return json.loads(file.read_text())

    def _prior(self, slide: SlideRef, labels: tuple[str, ...], classifier: str | None,
               unknown_threshold: float | None) -> ZeroShotResult:
        """The prompts' (or the classifier's) fake class map, before any marks."""
        if classifier is not None:
            labels = tuple(self._classifier(classifier)["labels"])
        return self._class_map(slide.path, labels, unknown_threshold)

    def refine(self, request: RefineRequest, *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> ZeroShotResult:
        """The prior's map with each marked cell set to its mark's class (a label the prior
        lacks adds a class); no marks: the prior's map, exactly."""
        self.calls.append("refine")
        if cancel is not None and cancel.is_set():
            raise CancelledError("refine cancelled")
        prior = self._prior(request.slide, tuple(request.labels), request.classifier, request.unknown_threshold)
        labels = list(prior.labels)
        cm, probs = prior.class_map.copy(), prior.probabilities
        for mark in request.marks:
            if mark.label not in labels:
                labels.append(mark.label)
                probs = np.concatenate([probs, np.where(np.isnan(probs[:1]), np.nan, 0.0).astype(np.float32)])
        cm[cm == len(prior.labels) + 1] = len(labels) + 1  # "unknown" stays after the classes
        rows, cols = cm.shape
        for mark in request.marks:
            for r, c in mark.cells:
                if not (0 <= r < rows and 0 <= c < cols):
                    raise InputError(f"marks[{mark.label!r}]: cell ({r}, {c}) is outside the {rows} x {cols} grid")
                k = labels.index(mark.label)
                cm[r, c] = k + 1
                probs[:, r, c] = 0.0
                probs[k, r, c] = 1.0
        return ZeroShotResult(tuple(labels), cm, probs, prior.geometry, True)

    def classify(self, request: ClassifyRequest, *, progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> ZeroShotResult:
        """The classifier's classes as a fake class map; with a region, cells whose centre is
        outside it are background."""
        self.calls.append("classify")
        clf = self._classifier(request.classifier)
        model = request.model or clf["model"]
        self.embed_slide(request.slide, model, request.tiles or TileOptions(), progress=progress, cancel=cancel)
        result = self._class_map(request.slide.path, tuple(clf["labels"]), request.unknown_threshold)
        if request.region is None:
            return result
        x, y, w, h = request.region.bounds
        rows, cols = result.class_map.shape
        r, c = np.mgrid[0:rows, 0:cols]
        cy, cx = (r + 0.5) * self.tile, (c + 0.5) * self.tile
        outside = ~((cx >= x) & (cx <= x + w) & (cy >= y) & (cy <= y + h))
        cm, probs = result.class_map.copy(), result.probabilities.copy()
        cm[outside] = 0
        probs[:, outside] = np.nan
        return ZeroShotResult(result.labels, cm, probs, result.geometry, True)

    def save_classifier(self, request: SaveClassifierRequest, *, progress: ProgressCallback | None = None,
                        cancel: threading.Event | None = None) -> ClassifierInfo:
        """Write a fake classifier (its classes: the prior's, then new mark labels) at ``path``."""
        import json

        self.calls.append("save_classifier")
        if not request.slides:
            raise InputError("save as classifier: no slide given; pass the slides the marks were made on")
        path = Path(request.path)
        if (path / CLASSIFIER_FILE).exists() and not request.overwrite:
            raise InputError(f"{request.path}: a classifier is there already; pass overwrite=True to replace it")
        prior = self._classifier(request.classifier) if request.classifier is not None else None
        labels = list(prior["labels"] if prior is not None else request.labels)
        n_marks = 0
        for i, sm in enumerate(request.slides):
            for mark in sm.marks:
                if mark.label not in labels:
                    labels.append(mark.label)
                n_marks += len(mark.cells)
            if progress is not None:
                progress(Progress(i + 1, len(request.slides), "fitting"))
        model = request.model or (prior["model"] if prior is not None else "fake-clip")
        tiles = request.tiles or TileOptions()
        name = request.name or path.name
        path.mkdir(parents=True, exist_ok=True)
        (path / CLASSIFIER_FILE).write_text(json.dumps({"name": name, "labels": labels, "model": model}))
        return ClassifierInfo(str(path), name, tuple(labels), model, f"{model}@fake", tiles, n_marks)

    def search_class(self, request: ClassSearchRequest) -> SearchResult:
        """The index's tiles (as :meth:`search`), scored for the classifier's class ``label``."""
        self.calls.append("search_class")
        labels = self._classifier(request.classifier)["labels"]
        if request.label not in labels:
            raise InputError(f"label {request.label!r}: not a class of {request.classifier}; its classes are "
                             + ", ".join(labels))
        found = self.search(SearchRequest(request.index_path, k=request.k))
        self.calls.pop()  # the inner search is this call's, not the caller's
        shift = 0.01 * labels.index(request.label)
        return SearchResult(tuple(dataclasses.replace(h, score=h.score - shift) for h in found.hits), found.note)

    def close(self) -> None:
        """Nothing is held open; the calls list records the close."""
        self.calls.append("close")
        self.closed = True
