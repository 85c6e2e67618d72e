"""The in-process :class:`backend.api.Backend`: models, caches and indexes held by one object.

The plugin and the CLI both go through this class, so a command-line run and a click in
napari share one code path. Models load on first use on the device picked once
(:func:`backend.device.pick_device`: CUDA, then MPS, then CPU) and stay loaded; embeddings go
to the on-disk cache and are reused by every task, so relabelling with new prompts, a text
heatmap, a search or the caption of an embedded region reads no pixel.

Threads: every method may be called from any thread, several at once, and :meth:`close` from
any thread (napari calls in from its worker pool, whose idle threads Qt retires after 30 s).
Models, captioners and open indexes are made once per key under a lock of that key (loading
one model does not hold up a search with another); an open index serialises its own calls
and its SQLite connection is not bound to the thread that opened it (see
:class:`backend.index.CohortIndex`); the text-feature cache locks itself; the embedding cache
locks per slide, across threads and processes. Model inference runs concurrently (torch
releases the GIL; a forward pass under ``inference_mode`` changes no state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from backend import api
from backend.classifiers import ClassifierTasks
from backend.embed import EmbeddingCache, SlideEmbeddings
from backend.errors import CancelledError, InputError, ModelError, ModelMismatchError
from backend.needs import Task, check_before_load
from backend.once import Once
from backend.slides import expand_slides  # the one folder-to-slides rule, re-exported here
from backend.tasks import TextFeatureCache
from backend.tasks.results import geometry

T = TypeVar("T")


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what}: cancelled")


def recordable_model_name(name: str) -> str:
    """What an index records as the name its model loads by: a bundle folder as an absolute
    path (a search may run from another directory), registry names and hub ids as given."""
    from backend.models.registry import HF_HUB_PREFIX, REGISTERED

    path = Path(name).expanduser()
    if name.lower() in REGISTERED or name.startswith(HF_HUB_PREFIX) or not path.is_dir():
        return name
    return str(path.resolve())


class LocalBackend(ClassifierTasks):
    """A :class:`backend.api.Backend` that runs models in this process.

    The classifier and refine methods (classify, refine, save_classifier, search_class) are
    :class:`backend.classifiers.ClassifierTasks`'.

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
        from backend.paths import cache_root

        self.cache = EmbeddingCache(cache_root(cache_dir) / "embeddings")
        self.device_request = device
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.text_cache = TextFeatureCache()
        self._models: Once[Any] = Once()
        self._captioners: Once[Any] = Once()
        self._readers: Once[Any] = Once()  # read-only indexes (cohort, caption corpus), kept open between searches

    def close(self) -> None:
        """Close the cohort indexes held open for searching (models are simply dropped).

        From any thread; a search running meanwhile finishes first (the index waits for it).
        The backend stays usable: what a later call needs is loaded or opened again.
        """
        self._models.take_all()
        self._captioners.take_all()
        for index in self._readers.take_all():
            index.close()

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
    ) -> Any:
        """The loaded :class:`backend.models.ClipModel` for ``name`` (loaded once, then kept).

        Before a load, ``progress`` gets ``Progress(0, 0, "loading model NAME")``; ``cancel`` is
        checked once the load returns (the model stays loaded for the next call).
        """

        def load() -> Any:
            from backend.device import pick_device
            from backend.models import load_model

            return load_model(name, device=pick_device(self.device_request))

        loading = []

        def announce() -> None:
            loading.append(True)
            if progress is not None:
                progress(api.Progress(0, 0, f"loading model {name}"))

        clip = self._models.get(name, load, missing=announce)
        if loading:  # a load (ours or another thread's) took time: the user may have given up
            _check_cancel(cancel, f"loading model {name}")
        return clip

    def captioner(self, path: str, clip_model_id: str) -> Any:
        """The captioner bundle at ``path``, checked against the CLIP model of the embeddings."""

        def load() -> Any:
            from backend.caption import load_captioner
            from backend.device import pick_device

            return load_captioner(path, clip_model_id=clip_model_id, device=pick_device(self.device_request))

        captioner = self._captioners.get(str(path), load)
        captioner.check_model_id(clip_model_id)
        return captioner

    def captioner_model(self, path: str) -> str:
        """The CLIP model the captioner bundle at ``path`` records it was trained with (reads
        its manifest only): the model a caption request without one uses."""
        from backend.caption import read_captioner_manifest

        return str(read_captioner_manifest(path)["clip_model_id"])

    def _recorded_model(
        self,
        given: str | None,
        recorded_name: str,
        recorded_id: str,
        what: str,
        progress: api.ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> Any:
        """The model ``what`` (an index, a captioner) was made with: ``given`` or, when None, the
        one it records; a model of another id is refused."""
        name = given or recorded_name
        try:
            clip = self.model(name, progress=progress, cancel=cancel)
        except ModelError as e:
            if given is not None:
                raise
            raise type(e)(
                f"{what} records model {recorded_name!r}, which cannot be loaded here ({e}); "
                "give the model it was made with"
            ) from e
        if str(clip.model_id) != recorded_id:
            if given is None:  # the recorded name now loads other weights
                raise ModelMismatchError(
                    f"{what} was made with model {recorded_id!r}, but {name!r} now loads as "
                    f"{str(clip.model_id)!r}: make it again with {name!r}, or give the model it was made with"
                )
            raise ModelMismatchError(
                f"{what} was made with model {recorded_id!r}, but model {name!r} is {str(clip.model_id)!r}: "
                f"leave the model out to use {recorded_id!r}, or use one made with {name!r}"
            )
        return clip

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
        """The slide's tile embeddings: from the cache, else encoded (and cached).

        With ``region``, only the tiles under it: taken from the cached slide when there is
        one, else encoded alone (a region's tiles are not cached as the slide's).
        ``slide.mpp`` is used only if the slide's metadata has none (:func:`slide_mpp_fallback`).
        """
        from backend.embed import embed_slide

        clip = self.model(model, progress=progress, cancel=cancel)
        mpp = slide_mpp_fallback(slide.path, slide.mpp)
        # With a region, the engine serves its tiles from the cached slide when there is one,
        # else encodes only them (without caching a part of a slide).
        emb = embed_slide(
            slide.path, clip, tiles.to_spec(), cache=self.cache, mpp=mpp, region=region,
            batch_size=self.batch_size, num_workers=self.num_workers, cancel=cancel, progress=progress,
        )
        if region is not None and emb.n_tiles == 0:
            x, y, w, h = region.bounds
            raise InputError(
                f"{Path(slide.path).name}: region at ({x:.0f}, {y:.0f}) size {w:.0f} x {h:.0f} covers no tissue tile"
            )
        return emb

    def embed_slide(
        self,
        slide: api.SlideRef,
        model: str,
        tiles: api.TileOptions = api.TileOptions(),
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.EmbedResult:
        from backend.embed import EmbedStage

        from_cache = []

        def watch(p: api.Progress) -> None:
            if not p.stage.startswith("loading"):
                from_cache.append(p.stage.startswith(EmbedStage.CACHED))
            if progress is not None:
                progress(p)

        emb = self.embeddings(slide, model, tiles, progress=watch, cancel=cancel)
        return api.EmbedResult(
            slide_name=emb.slide_name,
            model_id=emb.model_id,
            n_tiles=emb.n_tiles,
            geometry=geometry(emb.layout),
            from_cache=bool(from_cache) and all(from_cache),
            random_weights=bool(self.model(model).random_weights),
        )

    # --- tasks ------------------------------------------------------------------------------

    def zero_shot(
        self,
        request: api.ZeroShotRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ZeroShotResult:
        from backend.tasks import zero_shot
        from backend.tasks.zero_shot import check_prompts

        check_prompts(request.labels, request.synonyms, request.templates)  # before any embedding
        check_before_load(request.model, Task.ZERO_SHOT)  # an image-only model: before its load
        emb = self.embeddings(
            request.slide, request.model, request.tiles, region=request.region, progress=progress, cancel=cancel
        )
        cm = zero_shot(
            emb,
            list(request.labels),
            self.model(request.model),
            synonyms=[list(s) for s in request.synonyms] or None,
            templates=list(request.templates) or None,
            unknown_threshold=request.unknown_threshold,
            text_cache=self.text_cache,
        )
        return self.class_map_result(cm, request.model)

    def heatmap(
        self,
        request: api.HeatmapRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.HeatmapResult:
        from backend.tasks import text_heatmap

        check_before_load(request.model, Task.HEATMAP)
        emb = self.embeddings(request.slide, request.model, request.tiles, progress=progress, cancel=cancel)
        hm = text_heatmap(emb, request.query, self.model(request.model), text_cache=self.text_cache)
        return api.HeatmapResult(
            query=request.query,
            similarity=hm.map,
            geometry=geometry(hm.layout),
            random_weights=bool(self.model(request.model).random_weights),
        )

    def caption(
        self,
        request: api.CaptionRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.CaptionResult:
        from backend.caption import DecodeConfig
        from backend.embed.region import pool

        if not request.regions:
            raise InputError("caption: no region given; draw a rectangle or polygon first")
        # The bundle records the CLIP model it was trained on: the default, and the check.
        trained_with = self.captioner_model(request.captioner)
        clip = self._recorded_model(
            request.model, trained_with, trained_with, f"captioner {request.captioner}", progress, cancel
        )
        model = request.model or trained_with
        captioner = self.captioner(request.captioner, str(clip.model_id))
        vectors = []
        for region in request.regions:
            emb = self.embeddings(request.slide, model, request.tiles, region=region, progress=progress, cancel=cancel)
            vectors.append(pool(emb.vectors))
        _check_cancel(cancel, "caption")
        config = DecodeConfig(num_beams=request.beams, n_best=request.n_best, max_new_tokens=request.max_tokens)
        captions = captioner.caption(np.stack(vectors), model_id=str(clip.model_id), config=config)
        return api.CaptionResult(captions=tuple(captions))

    from backend.caption.tasks import corpus_caption, ground  # captions from a corpus, grounding: methods

    # --- cohort index -----------------------------------------------------------------------

    def build_index(
        self,
        request: api.IndexRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.IndexInfo:
        """Embed each slide (cached ones are not re-read) and add it to the index.

        A slide that cannot be read is reported in ``IndexInfo.failed`` and the others go on;
        slides already in the index are skipped, so a rerun after an interruption resumes.
        ``request.slide_mpp`` is used for the slides whose metadata has no mpp.
        """
        from backend.errors import HistoclipError

        slides = expand_slides(request.slides)
        index = self.open_index(request.index_path, request.model, create=True, progress=progress, cancel=cancel)
        failed: list[tuple[str, str]] = []
        try:
            for i, path in enumerate(slides):
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"indexing stopped after {i} of {len(slides)} slides")
                if progress is not None:
                    progress(api.Progress(i, len(slides), f"slide {Path(path).name}"))
                try:
                    ref = api.SlideRef(path, request.slide_mpp)
                    emb = self.embeddings(ref, request.model, request.tiles, cancel=cancel)
                except CancelledError:
                    raise
                except HistoclipError as e:
                    failed.append((path, str(e)))
                    continue
                index.add(emb, path)
            if progress is not None:
                progress(api.Progress(len(slides), len(slides), "done"))
            stats = index.stats()
            return api.IndexInfo(
                index_path=str(request.index_path),
                model_id=index.model_id,
                n_slides=stats.n_slides,
                n_vectors=stats.n_live,
                failed=tuple(failed),
            )
        finally:
            index.close()

    def open_index(
        self,
        path: str | os.PathLike[str],
        model: str,
        *,
        create: bool = False,
        read_only: bool = False,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """The cohort index at ``path``; with ``create``, opened for writing with ``model`` (created
        when absent, refused when it holds another model's embeddings)."""
        from backend.index import CohortIndex

        if create:
            clip = self.model(model, progress=progress, cancel=cancel)
            return CohortIndex.open_or_create(
                path, model_id=str(clip.model_id), dim=int(clip.embed_dim), model_name=recordable_model_name(model)
            )
        return CohortIndex.open(path, read_only=read_only)

    def _reader(self, path: str | os.PathLike[str]) -> Any:
        """A read-only handle on the index at ``path``, opened once; it keeps up with writers."""
        from backend.index import CohortIndex

        return self._readers.get(str(Path(path).resolve()), lambda: CohortIndex.open(path, read_only=True))

    def search(
        self,
        request: api.SearchRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.SearchResult:
        from backend.index.merge import region_place_tiles
        from backend.index.recorded import query_tiles

        if (request.text is None) == (request.region is None):
            raise InputError("search: give either a text query or a region of a slide, not both or neither")
        if request.region is not None and request.slide is None:
            raise InputError("search: a region query needs the slide it was drawn on")
        where = f"cohort index {request.index_path}"
        # Index first, then the model: a mistyped path fails in a second, not after a load.
        # The reader stays open: opening a 1M-tile index costs 0.3-0.8 s.
        index, keys = self._search_open(request.index_path, lambda ix: (ix, ix.spec_keys()))
        tiles = query_tiles(keys, request.tiles, str(request.index_path)) if request.region else None
        if request.text is not None:
            check_before_load(request.model or index.model_name, Task.TEXT_SEARCH)
        clip = self._recorded_model(request.model, index.model_name, index.model_id, where, progress, cancel)
        model = request.model or index.model_name
        exclude: list[str] = []
        if request.text is not None:
            query = self.text_cache.encode(clip, [request.text])[0]
            _check_cancel(cancel, "search")
            hits = self._search_open(request.index_path, lambda ix: ix.search(query, request.k, model_id=str(clip.model_id)))
        else:
            emb = self.embeddings(request.slide, model, tiles, region=request.region, progress=progress, cancel=cancel)
            exclude = [emb.slide_fingerprint] if request.exclude_query_slide else []
            cap = region_place_tiles(request.region.bounds, emb.tile_extent)  # places near the region's size
            _check_cancel(cancel, "search")
            hits = self._search_open(request.index_path, lambda ix: ix.search_region(
                emb.vectors, request.k, model_id=str(clip.model_id), exclude_slides=exclude, max_tiles=cap))
        return search_result(hits, self._search_open(request.index_path, lambda ix: ix.shortfall(
            request.k, len(hits), exclude_slides=exclude)))

    from backend.slide_level import search_slides, slide_zero_shot  # slide-level answers (issue 18)

    def _search_open(self, path: str, run: Callable[[Any], T]) -> T:
        """``run(index)`` on the open reader of ``path``; if :meth:`close` closed that reader
        after it was handed out, once more on a newly opened one."""
        from backend.index.cohort import IndexClosedError

        try:
            return run(self._reader(path))
        except IndexClosedError:
            return run(self._reader(path))


def search_result(hits: Any, note: str = "") -> api.SearchResult:
    """The index's hits as the interface's :class:`backend.api.SearchResult` (``note``: why fewer)."""
    return api.SearchResult(note=note, hits=tuple(
        api.SearchHit(slide_name=h.slide_name, slide_path=h.slide_path, box=tuple(float(v) for v in h.box),
                      score=float(h.score), n_tiles=int(h.n_tiles))
        for h in hits
    ))


def slide_mpp_fallback(path: str | os.PathLike[str], fallback: float | None) -> float | None:
    """The mpp to open a slide with: ``fallback`` only when its metadata has none.

    A user's µm/px (``--slide-mpp``, the dock's field, ``SlideRef.mpp``) is for slides that
    record none; it never overrides the slides that do (an NDPI at 0.23 µm/px is not at 0.5,
    and one value given for a whole cohort must not rescale the slides that know theirs).
    Opens the slide only when there is a fallback to decide about.
    """
    if fallback is None:
        return None
    from backend.slides import open_slide

    with open_slide(path) as slide:
        return None if slide.mpp is not None else float(fallback)
