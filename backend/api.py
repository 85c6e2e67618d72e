"""The ``Backend`` interface the plugin talks to, with its request and result types.

Every request and result is a frozen dataclass of plain values (str, int, float, tuples, numpy
arrays), so a remote form (HTTP) can serialise them without the widgets noticing. Long calls
take a ``progress`` callback, called with a :class:`Progress`, and a ``cancel`` event; a
cancelled call raises :class:`backend.errors.CancelledError` and keeps what it had written
(embeddings already cached stay cached). Loading a model is a stage of its own
(``Progress(0, 0, "loading model NAME")``), and cancel takes effect as soon as the load returns.

Every method of a :class:`Backend` may be called from any thread, several at once, and
``close()`` from any thread.

Defaults come from what the data records: a search without ``model`` uses the model the index
was built with and, for a region query, the index's own tiles; a caption without ``model`` the
CLIP model its captioner bundle was trained with. An explicit model that differs is an error.

Geometry: boxes and polygons are in level-0 pixels of the slide, (x, y) order. Maps over the
tile grid come with ``scale`` and ``translate`` in level-0 pixels, (row, col) order, so that a
viewer layer of the map lines up with the slide's level 0: multiply both by the slide's mpp when
the image layer is in microns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

# Part of this interface, defined in modules of their own: the plain values requests are made
# of, the slide-level answers' types, and those of captions from a corpus and caption grounding.
from backend.api_captions import CorpusCaptionRequest, GroundingRequest, GroundingResult  # noqa: F401
from backend.api_slide_level import (  # noqa: F401
    EvidenceTile,
    SlideHit,
    SlideSearchRequest,
    SlideSearchResult,
    SlideZeroShotRequest,
    SlideZeroShotResult,
)
from backend.api_values import GridGeometry, Region, RegionKind, SlideRef, TileOptions  # noqa: F401


@dataclass(frozen=True)
class Progress:
    """How far a long call has got: ``done`` of ``total`` units (tiles, slides), and what.

    The one progress type of the project (embedding engine, index builds, training encode).
    ``total == 0`` means "no count yet" (loading a model, waiting for another job); ``stage``
    starts with a word saying what is happening (``loading``, ``cached``, ``encoding``, ...),
    followed by what it is about (a model or slide name).
    """

    done: int
    total: int
    stage: str = ""

    @property
    def fraction(self) -> float:
        """``done / total``, 1.0 when there is nothing to count."""
        return 1.0 if self.total == 0 else self.done / self.total


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    embed_dim: int
    license: str
    random_weights: bool
    description: str = ""
    # what the model embeds: ("image",) for image-only encoders, ("image", "text") for
    # vision-language models (see backend.models.registry.Capability)
    capabilities: tuple[str, ...] = ("image", "text")
    # whether the weights are on the backend's disk (loading needs no download); None: unknown
    weights_on_disk: bool | None = None


@dataclass(frozen=True)
class EmbedResult:
    slide_name: str
    model_id: str
    n_tiles: int
    geometry: GridGeometry
    from_cache: bool
    random_weights: bool


@dataclass(frozen=True)
class ZeroShotRequest:
    slide: SlideRef
    model: str
    labels: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...] = ()  # per label, extra phrasings (may be empty)
    templates: tuple[str, ...] = ()  # empty: the default histopathology templates
    unknown_threshold: float | None = None
    region: Region | None = None
    tiles: TileOptions = field(default_factory=TileOptions)


@dataclass(frozen=True)
class ZeroShotResult:
    """Class map over the tile grid. ``class_map`` holds 1 + class index, 0 where no tissue,
    and ``len(labels) + 1`` for "unknown" when a threshold was given."""

    labels: tuple[str, ...]
    class_map: np.ndarray  # (rows, cols) int32
    probabilities: np.ndarray  # (n_classes, rows, cols) float32, NaN where no tissue
    geometry: GridGeometry
    random_weights: bool
    # What the writers (backend.tasks.export) and legends need beyond the arrays:
    colors: tuple[tuple[int, int, int], ...] = ()  # RGB per label; () for backend.palette's
    unknown_threshold: float | None = None  # None: the map has no "unknown" value
    tile_extent: float = 0.0  # a tile's side in level-0 pixels; 0 for one grid step
    model_id: str = ""  # the weights that embedded the tiles
    classifier: str = ""  # the classifier's name when one made the map ("" for prompts)

    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        """The RGB of each label: ``colors``, or the one palette's when none were given."""
        from backend.palette import class_colors

        return self.colors or class_colors(len(self.labels))


@dataclass(frozen=True)
class HeatmapRequest:
    slide: SlideRef
    model: str
    query: str
    tiles: TileOptions = field(default_factory=TileOptions)


@dataclass(frozen=True)
class HeatmapResult:
    query: str
    similarity: np.ndarray  # (rows, cols) float32 cosine similarity, NaN where no tissue
    geometry: GridGeometry
    random_weights: bool


@dataclass(frozen=True)
class CaptionRequest:
    slide: SlideRef
    regions: tuple[Region, ...]
    captioner: str  # a captioner bundle path
    model: str | None = None  # None: the CLIP model the bundle records; another one is an error
    beams: int = 3
    n_best: int = 3
    max_tokens: int = 30
    tiles: TileOptions = field(default_factory=TileOptions)


@dataclass(frozen=True)
class Caption:
    texts: tuple[str, ...]  # n-best, best first
    scores: tuple[float, ...]
    sources: tuple[tuple[str, ...], ...] = ()  # corpus captions: per text, where it (and its near-duplicates) came from


@dataclass(frozen=True)
class CaptionResult:
    captions: tuple[Caption, ...]  # one per region, in request order


@dataclass(frozen=True)
class IndexRequest:
    slides: tuple[str, ...]  # slide files or folders of slides
    index_path: str
    model: str
    tiles: TileOptions = field(default_factory=TileOptions)
    slide_mpp: float | None = None  # µm/px for the slides whose metadata has none


@dataclass(frozen=True)
class IndexInfo:
    index_path: str
    model_id: str
    n_slides: int
    n_vectors: int
    failed: tuple[tuple[str, str], ...] = ()  # (slide path, why) of slides left out


@dataclass(frozen=True)
class SearchRequest:
    index_path: str
    model: str | None = None  # None: the model the index records; another one is an error
    text: str | None = None
    slide: SlideRef | None = None
    region: Region | None = None
    k: int = 10
    exclude_query_slide: bool = True
    tiles: TileOptions | None = None  # None: the index's own tiles (for a region query)


@dataclass(frozen=True)
class SearchHit:
    slide_name: str
    slide_path: str
    box: tuple[float, float, float, float]  # level-0 (x, y, w, h)
    score: float
    n_tiles: int


@dataclass(frozen=True)
class SearchResult:
    hits: tuple[SearchHit, ...]
    note: str = ""  # why fewer than the k hits asked for came back ("" when k did)


# --- classifiers and few-shot refinement -----------------------------------------------------------


@dataclass(frozen=True)
class TileMarks:
    """Tiles a user marked with their right class: grid cells ``(row, col)`` of the class map.

    ``label`` is a class name; one the prompts (or classifier) lack adds a class of its own.
    """

    label: str
    cells: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RefineRequest:
    """Refine a slide's class map with marked tiles, from the cached embeddings.

    The prior is the zero-shot classifier of ``labels`` (with ``synonyms`` and ``templates``,
    as in :class:`ZeroShotRequest`) or, with ``classifier``, a classifier bundle (then ``model``
    None means the classifier's model, ``tiles`` None its tile spec, and ``labels`` stay empty).
    ``colors``: one ``#rrggbb`` per label (empty: the palette's), the classes' colours in the
    head a refine fits and a saved classifier keeps. No marks: the prior's map, exactly.
    """

    slide: SlideRef
    marks: tuple[TileMarks, ...] = ()
    model: str | None = None
    labels: tuple[str, ...] = ()
    synonyms: tuple[tuple[str, ...], ...] = ()
    templates: tuple[str, ...] = ()
    classifier: str | None = None
    unknown_threshold: float | None = None
    tiles: TileOptions | None = None  # None: the classifier's, else TileOptions()
    colors: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassifyRequest:
    """Apply a classifier bundle to a slide (or a region of it).

    ``model`` None: the CLIP model the classifier records; ``tiles`` None: its tile spec;
    ``unknown_threshold`` None: its own default.
    """

    slide: SlideRef
    classifier: str
    model: str | None = None
    region: Region | None = None
    unknown_threshold: float | None = None
    tiles: TileOptions | None = None


@dataclass(frozen=True)
class SlideMarks:
    """The marks made on one slide (for training a classifier from several slides)."""

    slide: SlideRef
    marks: tuple[TileMarks, ...]


@dataclass(frozen=True)
class SaveClassifierRequest:
    """"Save as classifier": fit the refined head on marks from one or several slides and write
    a classifier bundle at ``path``. The prior is as in :class:`RefineRequest`."""

    path: str
    slides: tuple[SlideMarks, ...]
    model: str | None = None
    labels: tuple[str, ...] = ()
    synonyms: tuple[tuple[str, ...], ...] = ()
    templates: tuple[str, ...] = ()
    classifier: str | None = None
    name: str | None = None  # default: the bundle folder's name
    unknown_threshold: float | None = None
    tiles: TileOptions | None = None
    overwrite: bool = False
    colors: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassifierInfo:
    """A classifier bundle on disk: its classes, the model and tile spec it works on."""

    path: str
    name: str
    labels: tuple[str, ...]
    model: str
    model_id: str
    tiles: TileOptions
    n_marks: int = 0


@dataclass(frozen=True)
class ClassSearchRequest:
    """Search a cohort index for the tiles a classifier's class ``label`` scores highest."""

    index_path: str
    classifier: str
    label: str
    k: int = 10


@runtime_checkable
class Backend(Protocol):
    """What a widget may ask of a backend, in-process or remote."""

    # Slide-level answers (types in backend.api_slide_level).
    def slide_zero_shot(self, request: SlideZeroShotRequest, *, progress: ProgressCallback | None = None,
                        cancel: threading.Event | None = None) -> SlideZeroShotResult: ...

    def search_slides(self, request: SlideSearchRequest, *, progress: ProgressCallback | None = None,
                      cancel: threading.Event | None = None) -> SlideSearchResult: ...

    # Classifiers and few-shot refinement: class maps as zero-shot's.
    def refine(
        self,
        request: RefineRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ZeroShotResult: ...

    def classify(
        self,
        request: ClassifyRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ZeroShotResult: ...

    def save_classifier(
        self,
        request: SaveClassifierRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ClassifierInfo: ...

    def search_class(self, request: ClassSearchRequest) -> SearchResult: ...

    def close(self) -> None:
        """Let go of what the backend holds; from any thread.

        In process: the cohort and corpus indexes held open for searching are closed and the
        loaded models dropped; the backend stays usable (a later call loads or opens again).
        Remote: the HTTP connection pool is closed; the backend takes no call after it.
        """

    def list_models(self) -> list[ModelInfo]: ...

    def embed_slide(
        self,
        slide: SlideRef,
        model: str,
        tiles: TileOptions = ...,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EmbedResult: ...

    def zero_shot(
        self,
        request: ZeroShotRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ZeroShotResult: ...

    def heatmap(
        self,
        request: HeatmapRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> HeatmapResult: ...

    def caption(
        self,
        request: CaptionRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> CaptionResult: ...

    # Captions from a corpus, caption grounding (types in backend.api_captions).
    def corpus_caption(self, request: CorpusCaptionRequest, *, progress: ProgressCallback | None = None,
                       cancel: threading.Event | None = None) -> CaptionResult: ...

    def ground(self, request: GroundingRequest, *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> GroundingResult: ...

    def build_index(
        self,
        request: IndexRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> IndexInfo: ...

    def search(
        self,
        request: SearchRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SearchResult: ...

