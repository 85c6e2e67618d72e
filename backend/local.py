"""The in-process :class:`backend.api.Backend`: a thin class over the task modules.

:class:`LocalBackend` owns one :class:`backend.resources.Resources` (models, captioners and
open indexes, each loaded once and kept; the embedding and text-feature caches) and hands it
to the task functions that do the work: :mod:`backend.map_tasks` (embedding, zero-shot,
heatmap), :mod:`backend.cohort_tasks` (index building, search), :mod:`backend.classifiers`
(classify, refine, save as classifier, class search), :mod:`backend.caption.tasks` (captions,
grounding) and :mod:`backend.slide_level` (whole-slide answers). Embeddings go to the on-disk
cache and are reused by every task, so relabelling with new prompts, a text heatmap, a search
or the caption of an embedded region reads no pixel.

Threads: every method may be called from any thread, several at once, and :meth:`close` from
any thread; the holder's rules (see :mod:`backend.resources`) make that safe.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from backend import api, classifiers, cohort_tasks, map_tasks, slide_level
from backend.caption import tasks as caption_tasks
from backend.embed import EmbeddingCache, SlideEmbeddings
from backend.resources import Resources
from backend.slides import expand_slides  # noqa: F401 - the one folder-to-slides rule, re-exported here
from backend.tasks import TextFeatureCache

if TYPE_CHECKING:
    from backend.caption.captioner import Captioner
    from backend.index import CohortIndex
    from backend.models.classifier import Classifier
    from backend.models.encoder import Encoder


class LocalBackend:
    """A :class:`backend.api.Backend` that runs models in this process.

    Parameters
    ----------
    cache_dir : path, optional
        Root of the embedding cache (default ``$HISTOCLIP_CACHE_DIR`` or the user cache dir).
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:1``, ``mps``; default: the best available.
    batch_size, num_workers
        Tiles per model call, and tile-reading threads.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
    ) -> None:
        self.resources = Resources(cache_dir, device, batch_size=batch_size, num_workers=num_workers)

    @property
    def cache(self) -> EmbeddingCache:
        """The on-disk embedding cache."""
        return self.resources.cache

    @property
    def text_cache(self) -> TextFeatureCache:
        """The in-memory cache of text features (prompts encoded once per model)."""
        return self.resources.text_cache

    def close(self) -> None:
        """Close the cohort and corpus indexes held open for searching (models and captioners are
        simply dropped).

        From any thread; a search running meanwhile finishes first (the index waits for it).
        The backend stays usable: what a later call needs is loaded or opened again.
        """
        self.resources.close()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models -----------------------------------------------------------------------------

    def list_models(self) -> list[api.ModelInfo]:
        from backend.models import list_models
        from backend.weights_check import model_info

        return [model_info(e) for e in list_models()]

    def model(
        self,
        name: str,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Encoder:
        """The loaded model for ``name`` (loaded once, then kept); see :meth:`Resources.model`."""
        return self.resources.model(name, progress=progress, cancel=cancel)

    def captioner(self, path: str, clip_model_id: str) -> Captioner:
        """The captioner bundle at ``path``, checked against the CLIP model of the embeddings."""
        return self.resources.captioner(path, clip_model_id)

    def captioner_model(self, path: str) -> str:
        """The CLIP model the captioner bundle at ``path`` records it was trained with."""
        return self.resources.captioner_model(path)

    def classifier(self, path: str | os.PathLike[str]) -> Classifier:
        """The classifier bundle at ``path`` (re-read on every call)."""
        return classifiers.classifier(path)

    def classifier_model(self, clf: Classifier, given: str | None = None, *,
                         progress: api.ProgressCallback | None = None, cancel: threading.Event | None = None) -> str:
        """The name of the model ``clf`` classifies embeddings of, loaded and checked."""
        return classifiers.classifier_model(self.resources, clf, given, progress=progress, cancel=cancel)

    # --- embeddings -------------------------------------------------------------------------

    def embeddings(
        self,
        slide: api.SlideRef,
        model: str,
        tiles: api.TileOptions = api.TileOptions(),
        *,
        region: api.Region | None = None,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SlideEmbeddings:
        """The slide's tile embeddings, from the cache or encoded; see :meth:`Resources.embeddings`."""
        return self.resources.embeddings(slide, model, tiles, region=region, progress=progress, cancel=cancel)

    def embed_slide(
        self,
        slide: api.SlideRef,
        model: str,
        tiles: api.TileOptions = api.TileOptions(),
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.EmbedResult:
        return map_tasks.embed_slide(self.resources, slide, model, tiles, progress=progress, cancel=cancel)

    # --- tasks ------------------------------------------------------------------------------

    def zero_shot(
        self,
        request: api.ZeroShotRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ZeroShotResult:
        return map_tasks.zero_shot(self.resources, request, progress=progress, cancel=cancel)

    def heatmap(
        self,
        request: api.HeatmapRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.HeatmapResult:
        return map_tasks.heatmap(self.resources, request, progress=progress, cancel=cancel)

    def classify(
        self,
        request: api.ClassifyRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ZeroShotResult:
        return classifiers.classify(self.resources, request, progress=progress, cancel=cancel)

    def refine(
        self,
        request: api.RefineRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ZeroShotResult:
        return classifiers.refine(self.resources, request, progress=progress, cancel=cancel)

    def save_classifier(
        self,
        request: api.SaveClassifierRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ClassifierInfo:
        return classifiers.save_classifier(self.resources, request, progress=progress, cancel=cancel)

    def search_class(self, request: api.ClassSearchRequest) -> api.SearchResult:
        return classifiers.search_class(self.resources, request)

    def caption(
        self,
        request: api.CaptionRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.CaptionResult:
        return caption_tasks.caption(self.resources, request, progress=progress, cancel=cancel)

    def corpus_caption(
        self,
        request: api.CorpusCaptionRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.CaptionResult:
        return caption_tasks.corpus_caption(self.resources, request, progress=progress, cancel=cancel)

    def ground(
        self,
        request: api.GroundingRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.GroundingResult:
        return caption_tasks.ground(self.resources, request, progress=progress, cancel=cancel)

    def slide_zero_shot(
        self,
        request: api.SlideZeroShotRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.SlideZeroShotResult:
        return slide_level.slide_zero_shot(self.resources, request, progress=progress, cancel=cancel)

    # --- cohort index -----------------------------------------------------------------------

    def build_index(
        self,
        request: api.IndexRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.IndexInfo:
        return cohort_tasks.build_index(self.resources, request, progress=progress, cancel=cancel)

    def open_index(
        self,
        path: str | os.PathLike[str],
        model: str,
        *,
        create: bool = False,
        read_only: bool = False,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> CohortIndex:
        """The cohort index at ``path`` (the caller closes it); see :meth:`Resources.open_index`."""
        return self.resources.open_index(
            path, model, create=create, read_only=read_only, progress=progress, cancel=cancel
        )

    def search(
        self,
        request: api.SearchRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.SearchResult:
        return cohort_tasks.search(self.resources, request, progress=progress, cancel=cancel)

    def search_slides(
        self,
        request: api.SlideSearchRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.SlideSearchResult:
        return slide_level.search_slides(self.resources, request, progress=progress, cancel=cancel)
