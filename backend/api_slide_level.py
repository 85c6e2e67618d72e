"""The request and result types of the slide-level calls of :class:`backend.api.Backend`
(``slide_zero_shot``, ``search_slides``); :mod:`backend.api` re-exports them, so they are used
as ``api.SlideZeroShotRequest`` like every other type of the interface. Frozen dataclasses of
plain values, as there (the HTTP wire serialises them).
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.api_values import SlideRef, TileOptions


@dataclass(frozen=True)
class SlideZeroShotRequest:
    """One answer for a whole slide, pooled from its tiles (MI-Zero; see
    :mod:`backend.tasks.slide_zero_shot`).

    Prompts (``model``, ``labels``, ``synonyms``, ``templates`` as in :class:`backend.api.ZeroShotRequest`)
    or a ``classifier`` bundle (then ``model`` None means the classifier's model and ``tiles``
    None its tile spec). ``pooling`` is ``topk`` (mean of each class's ``k`` best tiles),
    ``mean`` or ``fraction`` (top-k with ``k`` that share of the tiles); ``evidence`` tiles per
    class come back with their scores.
    """

    slide: SlideRef
    model: str | None = None
    labels: tuple[str, ...] = ()
    synonyms: tuple[tuple[str, ...], ...] = ()
    templates: tuple[str, ...] = ()
    classifier: str | None = None
    pooling: str = "topk"
    k: int = 50
    fraction: float = 0.05
    evidence: int = 5
    unknown_threshold: float | None = None
    tiles: TileOptions | None = None  # None: the classifier's, else TileOptions()


@dataclass(frozen=True)
class EvidenceTile:
    """A tile that made a class's score: its class, level-0 box ``(x, y, w, h)``, grid cell
    ``(row, col)``, its score (cosine similarity, or a head's logit) and rank within the class."""

    label: str
    box: tuple[float, float, float, float]
    cell: tuple[int, int]
    score: float
    rank: int


@dataclass(frozen=True)
class SlideZeroShotResult:
    """The slide's verdict: ``predicted`` (a label, or "unknown"), per-class ``probabilities``
    and pooled ``scores`` in label order, ``n_pooled`` tiles per class, and the evidence tiles
    of every class (best first within a class)."""

    slide_name: str
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    scores: tuple[float, ...]
    predicted: str
    runner_up: str
    evidence: tuple[EvidenceTile, ...]
    n_tiles: int
    n_pooled: int
    pooling: str
    random_weights: bool

    def probability(self, label: str) -> float:
        """The probability of class ``label``."""
        return self.probabilities[self.labels.index(label)]


@dataclass(frozen=True)
class SlideSearchRequest:
    """Slides of a cohort index like ``slide`` ("slides like this one"), best first."""

    index_path: str
    slide: SlideRef
    k: int = 10
    model: str | None = None  # None: the index's model
    exclude_query_slide: bool = True


@dataclass(frozen=True)
class SlideHit:
    """A slide found like the query: its name, path, score and tile count in the index."""

    slide_name: str
    slide_path: str
    score: float
    n_tiles: int


@dataclass(frozen=True)
class SlideSearchResult:
    hits: tuple[SlideHit, ...]



