"""Per-tile maps of one slide as an in-process backend runs them: embedding, zero-shot class
maps and text heatmaps, over the :class:`backend.resources.Resources` they are given.

The computations are the pure task modules (:mod:`backend.tasks.zero_shot`,
:mod:`backend.tasks.heatmap`); these functions fetch what they need from the holder (the
model, the slide's cached embeddings, the text-feature cache) and return the interface's
results. :class:`backend.local.LocalBackend`'s methods of the same names call them.
Threads: as the holder, from any thread.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from backend import api
from backend.needs import Task, check_before_load
from backend.resources import Resources
from backend.tasks.results import geometry

if TYPE_CHECKING:
    from backend.tasks import ClassMap


def class_map_result(resources: Resources, cm: ClassMap, model: str, *, classifier: str = "") -> api.ZeroShotResult:
    """A :class:`backend.tasks.ClassMap` as the interface's :class:`backend.api.ZeroShotResult`
    (``model``: the name it was made with, for its random-weights flag; ``classifier``: the
    bundle's name when a classifier made it)."""
    from backend.tasks.results import class_map_result as as_result

    return as_result(cm, random_weights=bool(resources.model(model).random_weights), classifier=classifier)


def embed_slide(
    resources: Resources,
    slide: api.SlideRef,
    model: str,
    tiles: api.TileOptions = api.TileOptions(),
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.EmbedResult:
    """Embed a whole slide into the cache (``Backend.embed_slide``)."""
    from backend.embed import EmbedStage

    from_cache = []

    def watch(p: api.Progress) -> None:
        if not p.stage.startswith("loading"):
            from_cache.append(p.stage.startswith(EmbedStage.CACHED))
        if progress is not None:
            progress(p)

    emb = resources.embeddings(slide, model, tiles, progress=watch, cancel=cancel)
    return api.EmbedResult(
        slide_name=emb.slide_name,
        model_id=emb.model_id,
        n_tiles=emb.n_tiles,
        geometry=geometry(emb.layout),
        from_cache=bool(from_cache) and all(from_cache),
        random_weights=bool(resources.model(model).random_weights),
    )


def zero_shot_map(
    resources: Resources,
    request: api.ZeroShotRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ClassMap:
    """The zero-shot :class:`backend.tasks.ClassMap` of ``request`` (per-tile probabilities and
    colours). Prompts and the model's capability are checked before any embedding or load."""
    from backend.tasks import zero_shot
    from backend.tasks.zero_shot import check_prompts

    check_prompts(request.labels, request.synonyms, request.templates)  # before any embedding
    check_before_load(request.model, Task.ZERO_SHOT)  # an image-only model: before its load
    emb = resources.embeddings(
        request.slide, request.model, request.tiles, region=request.region, progress=progress, cancel=cancel
    )
    return zero_shot(
        emb,
        list(request.labels),
        resources.model(request.model),
        synonyms=[list(s) for s in request.synonyms] or None,
        templates=list(request.templates) or None,
        unknown_threshold=request.unknown_threshold,
        text_cache=resources.text_cache,
    )


def zero_shot(
    resources: Resources,
    request: api.ZeroShotRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.ZeroShotResult:
    """``Backend.zero_shot``: :func:`zero_shot_map` as the interface's result."""
    cm = zero_shot_map(resources, request, progress=progress, cancel=cancel)
    return class_map_result(resources, cm, request.model)


def heatmap(
    resources: Resources,
    request: api.HeatmapRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.HeatmapResult:
    """``Backend.heatmap``: each tile's similarity to a text query."""
    from backend.tasks import text_heatmap

    check_before_load(request.model, Task.HEATMAP)
    emb = resources.embeddings(request.slide, request.model, request.tiles, progress=progress, cancel=cancel)
    clip = resources.model(request.model)
    hm = text_heatmap(emb, request.query, clip, text_cache=resources.text_cache)
    return api.HeatmapResult(
        query=request.query,
        similarity=hm.map,
        geometry=geometry(hm.layout),
        random_weights=bool(clip.random_weights),
    )
