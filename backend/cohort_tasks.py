"""Cohort indexes as an in-process backend builds and searches them, over the
:class:`backend.resources.Resources` they are given (models, the embedding cache, the index
readers it keeps open). :class:`backend.local.LocalBackend`'s ``build_index`` and ``search``
call these. Threads: as the holder, from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from backend import api
from backend.errors import CancelledError, InputError
from backend.geometry import float_box
from backend.needs import Task, check_before_load
from backend.resources import Resources, check_cancel

if TYPE_CHECKING:
    from backend.index.records import Hit


def search_result(hits: Iterable[Hit], note: str = "") -> api.SearchResult:
    """The index's hits as the interface's :class:`backend.api.SearchResult` (``note``: why fewer)."""
    return api.SearchResult(note=note, hits=tuple(
        api.SearchHit(slide_name=h.slide_name, slide_path=h.slide_path, box=float_box(h.box),
                      score=float(h.score), n_tiles=int(h.n_tiles))
        for h in hits
    ))


def build_index(
    resources: Resources,
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
    from backend.slides import expand_slides

    slides = expand_slides(request.slides)
    index = resources.open_index(request.index_path, request.model, create=True, progress=progress, cancel=cancel)
    failed: list[tuple[str, str]] = []
    try:
        for i, path in enumerate(slides):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"indexing stopped after {i} of {len(slides)} slides")
            if progress is not None:
                progress(api.Progress(i, len(slides), f"slide {Path(path).name}"))
            try:
                ref = api.SlideRef(path, request.slide_mpp)
                emb = resources.embeddings(ref, request.model, request.tiles, cancel=cancel)
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


def search(
    resources: Resources,
    request: api.SearchRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.SearchResult:
    """The places of a cohort most like a text query or a region of a slide (``Backend.search``)."""
    from backend.index.merge import region_place_tiles
    from backend.index.recorded import query_tiles

    text, slide, region = request.text, request.slide, request.region
    if (text is None) == (region is None):
        raise InputError("search: give either a text query or a region of a slide, not both or neither")
    if region is not None and slide is None:
        raise InputError("search: a region query needs the slide it was drawn on")
    where = f"cohort index {request.index_path}"
    path = request.index_path
    # Index first, then the model: a mistyped path fails in a second, not after a load.
    # The reader stays open: opening a 1M-tile index costs 0.3-0.8 s.
    index, keys = resources.on_reader(path, lambda ix: (ix, ix.spec_keys()))
    tiles = query_tiles(keys, request.tiles, str(path)) if region else None
    if text is not None:
        check_before_load(request.model or index.model_name, Task.TEXT_SEARCH)
    clip = resources.recorded_model(request.model, index.model_name, index.model_id, where, progress, cancel)
    model = request.model or index.model_name
    model_id = str(clip.model_id)
    exclude: list[str] = []
    if text is not None:
        query = resources.text_cache.encode(clip, [text])[0]
        check_cancel(cancel, "search")
        hits = resources.on_reader(path, lambda ix: ix.search_each(query, request.k, model_id=model_id)[0])
    elif slide is not None and region is not None and tiles is not None:  # a region of a slide (checked above)
        emb = resources.embeddings(slide, model, tiles, region=region, progress=progress, cancel=cancel)
        exclude = [emb.slide_fingerprint] if request.exclude_query_slide else []
        cap = region_place_tiles(region.bounds, emb.tile_extent)  # places near the region's size
        check_cancel(cancel, "search")
        hits = resources.on_reader(path, lambda ix: ix.search_region(
            emb.vectors, request.k, model_id=model_id, exclude_slides=exclude, max_tiles=cap))
    return search_result(hits, resources.on_reader(path, lambda ix: ix.shortfall(
        request.k, len(hits), exclude_slides=exclude)))
