"""Slide-level answers of :class:`backend.local.LocalBackend`: whole-slide zero-shot (MI-Zero
pooling, from prompts or a classifier bundle) and "slides like this one" over a cohort index.

Functions that take the :class:`backend.resources.Resources` holder (models, caches and open
indexes); ``LocalBackend``'s ``slide_zero_shot`` and ``search_slides`` call them. The
computations themselves are the pure task modules :mod:`backend.tasks.slide_zero_shot` and
:mod:`backend.tasks.slide_search`. Threads: as the holder, from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from backend import api
from backend.classifiers import classifier, classifier_model
from backend.errors import CancelledError, InputError
from backend.geometry import float_box
from backend.resources import Resources

if TYPE_CHECKING:
    import numpy as np

    from backend.index.records import SlideRecord
    from backend.tasks.slide_zero_shot import SlideVerdict

TASK = "slide-level zero-shot"


def slide_verdict(
    resources: Resources,
    request: api.SlideZeroShotRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> tuple[SlideVerdict, str]:
    """The backend's :class:`~backend.tasks.slide_zero_shot.SlideVerdict` for ``request``, and
    the name of the model its embeddings are from. Embeds the slide first when it is not cached."""
    from backend.models import Capability, require_capability, resolve_model
    from backend.tasks.slide_zero_shot import PoolingOptions, as_pooling, slide_classify, slide_zero_shot
    from backend.tasks.zero_shot import check_prompts

    pooling = PoolingOptions(as_pooling(request.pooling), request.k, request.fraction)  # checked before any work
    if request.evidence < 0:
        raise InputError(f"evidence: the number of evidence tiles per class must be >= 0, got {request.evidence}")
    if request.classifier is not None:
        if request.labels:
            raise InputError(f"{TASK}: give either prompts (labels) or a classifier, not both")
        clf = classifier(request.classifier)
        model = classifier_model(resources, clf, request.model, progress=progress, cancel=cancel)
        tiles = request.tiles or api.TileOptions(**clf.tiles)
        emb = resources.embeddings(request.slide, model, tiles, progress=progress, cancel=cancel)
        verdict = slide_classify(emb, clf.head, pooling=pooling, n_evidence=request.evidence,
                                 unknown_threshold=request.unknown_threshold if request.unknown_threshold
                                 is not None else clf.unknown_threshold)
        return verdict, model
    if request.model is None:
        raise InputError(f"{TASK}: name the vision-language model (model=...) the prompts are encoded with, "
                         "or give a classifier")
    require_capability(resolve_model(request.model), Capability.TEXT, TASK)
    check_prompts(request.labels, request.synonyms, request.templates)  # before any embedding
    emb = resources.embeddings(request.slide, request.model, request.tiles or api.TileOptions(),
                                progress=progress, cancel=cancel)
    verdict = slide_zero_shot(
        emb, list(request.labels), resources.model(request.model),
        synonyms=[list(s) for s in request.synonyms] or None, templates=list(request.templates) or None,
        pooling=pooling, n_evidence=request.evidence, unknown_threshold=request.unknown_threshold,
        text_cache=resources.text_cache,
    )
    return verdict, request.model


def verdict_result(verdict: SlideVerdict, random_weights: bool) -> api.SlideZeroShotResult:
    """A :class:`SlideVerdict` as the interface's plain :class:`backend.api.SlideZeroShotResult`."""
    boxes = verdict.layout.boxes()
    cells = verdict.layout.grid_index
    evidence = []
    for c, name in enumerate(verdict.class_names):
        for rank, (i, s) in enumerate(zip(verdict.evidence[c], verdict.evidence_scores[c], strict=True)):
            evidence.append(api.EvidenceTile(
                label=name, box=float_box(boxes[i]), cell=(int(cells[i, 0]), int(cells[i, 1])),
                score=float(s), rank=rank,
            ))
    return api.SlideZeroShotResult(
        slide_name=verdict.slide_name,
        labels=verdict.class_names,
        probabilities=tuple(float(p) for p in verdict.probabilities),
        scores=tuple(float(s) for s in verdict.scores),
        predicted=verdict.label,
        runner_up=verdict.class_names[verdict.runner_up],
        evidence=tuple(evidence),
        n_tiles=int(verdict.layout.n_tiles),
        n_pooled=int(verdict.n_pooled),
        pooling=verdict.pooling.method.value,
        random_weights=random_weights,
    )


def slide_zero_shot(
    resources: Resources,
    request: api.SlideZeroShotRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.SlideZeroShotResult:
    """``LocalBackend.slide_zero_shot``."""
    verdict, model = slide_verdict(resources, request, progress=progress, cancel=cancel)
    return verdict_result(verdict, bool(resources.model(model).random_weights))


def search_slides(
    resources: Resources,
    request: api.SlideSearchRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.SlideSearchResult:
    """``LocalBackend.search_slides``: the index's slides ranked by
    :func:`backend.tasks.slide_search.rank_slides` against the query slide's tiles."""
    from backend.index.recorded import query_tiles
    from backend.tasks.slide_search import rank_slides

    if request.k < 1:
        raise InputError(f"k: the number of slides to return must be at least 1, got {request.k}")
    where = f"cohort index {request.index_path}"
    index, keys = resources.on_reader(request.index_path, lambda ix: (ix, ix.spec_keys()))
    tiles = query_tiles(keys, None, str(request.index_path))
    resources.recorded_model(request.model, index.model_name, index.model_id, where, progress, cancel)
    model = request.model or index.model_name
    emb = resources.embeddings(request.slide, model, tiles, progress=progress, cancel=cancel)
    exclude = {emb.slide_fingerprint} if request.exclude_query_slide else set()
    listed = resources.on_reader(request.index_path, lambda ix: ix.slides())
    records = [r for r in listed if r.fingerprint not in exclude]

    def vectors_of(record: SlideRecord) -> np.ndarray:
        return resources.on_reader(request.index_path, lambda ix: ix.slide_vectors(record))

    def candidates() -> Iterator[tuple[SlideRecord, np.ndarray]]:
        """One slide's vectors at a time (a cohort's would not fit in memory at once)."""
        for i, record in enumerate(records):
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"slide search: cancelled after {i} of {len(records)} slides")
            if progress is not None:
                progress(api.Progress(i, len(records), f"comparing {record.slide_name}"))
            yield record, vectors_of(record)

    ranked = rank_slides(emb.vectors, candidates())
    return api.SlideSearchResult(hits=tuple(
        api.SlideHit(slide_name=r.slide_name, slide_path=r.slide_path, score=float(s), n_tiles=int(r.n_tiles))
        for r, s in ranked[: request.k]
    ))
