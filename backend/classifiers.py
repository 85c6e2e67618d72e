"""Classifier and few-shot refinement tasks as an in-process backend runs them, over the
:class:`backend.resources.Resources` they are given.

A classifier bundle (``backend.models.classifier``) names its image tower: an unchanged
registry model (its cached slide embeddings are all classify needs) or the bundle's own
image-only ``backbone/`` (a CLIP-IT student), loaded like any model bundle and embedded
through the same engine and cache, under its own model id. Either way the result is
zero-shot's class map, so every layer, legend and export path serves it.
:class:`backend.local.LocalBackend`'s classify, refine, save_classifier and search_class call
these functions.

Threads: as the holder, from any thread. Bundles are a few KB and re-read (sha256-checked) on
every call, so a re-saved bundle is never served stale; a re-saved bundle's new backbone is
loaded again (the model cache is keyed by its path).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend import api
from backend.errors import InputError
from backend.map_tasks import class_map_result
from backend.needs import Task, check_before_load
from backend.resources import Resources

if TYPE_CHECKING:
    from backend.models.classifier import Classifier
    from backend.models.heads import LinearHead

    PriorRequest = api.RefineRequest | api.SaveClassifierRequest


def classifier(path: str | os.PathLike[str]) -> Classifier:
    """The classifier bundle at ``path`` (a few KB, sha256-checked: read on every call, so a
    re-saved bundle is never served stale)."""
    from backend.models.classifier import load_classifier

    return load_classifier(path)


def classifier_model(resources: Resources, clf: Classifier, given: str | None = None, *,
                     progress: api.ProgressCallback | None = None, cancel: threading.Event | None = None) -> str:
    """The name of the model ``clf`` classifies embeddings of (``given``, else the one it
    records), loaded and checked to be the one it was trained on."""
    from backend.models.classifier import BackboneSource

    name = given or clf.model
    clip = resources.model(name, progress=progress, cancel=cancel)
    if given is None and clf.backbone_source is BackboneSource.BUNDLE and str(clip.model_id) != clf.model_id:
        # The bundle was saved again at this path since its backbone was loaded: load the new one.
        resources.forget_model(name)
        clip = resources.model(name, progress=progress, cancel=cancel)
    clf.check_model_id(str(clip.model_id), name)
    return name


def prior(resources: Resources, request: PriorRequest, what: str
          ) -> tuple[LinearHead, str, api.TileOptions, tuple[str, ...], float | None, dict[str, Any]]:
    """The linear head a refine/save request starts from: (head, model, tiles, templates,
    unknown threshold, card entry), from its classifier bundle or its prompts."""
    from backend.models.heads import LinearHead
    from backend.tasks.refine import text_head
    from backend.tasks.zero_shot import check_templates, class_text_features, parse_classes, prompt_colors

    if request.classifier is not None:
        if request.labels:
            raise InputError(f"{what}: give either prompts (labels) or a classifier to start from, not both")
        clf = classifier(request.classifier)
        if not isinstance(clf.head, LinearHead):
            raise InputError(
                f"{what}: classifier {clf.name!r} ({request.classifier}) has a {type(clf.head).__name__} "
                "(late fusion); refining starts from a linear head: refine from prompts, or from a "
                "linear classifier"
            )
        model = classifier_model(resources, clf, request.model)
        tiles = request.tiles or api.TileOptions(**clf.tiles)
        card = {"prior": "classifier", "classifier": clf.name, "classifier_card": dict(clf.card)}
        return clf.head, model, tiles, (), clf.unknown_threshold, card
    if request.model is None:
        raise InputError(f"{what}: name the CLIP model (model=...) the prompts are encoded with, or give a classifier")
    if not request.labels:  # marks alone: any encoder, no zero-shot prior
        from backend.tasks.refine import marks_only_head

        head = marks_only_head(int(resources.model(request.model).embed_dim))
        return head, request.model, request.tiles or api.TileOptions(), (), None, {"prior": "none (marks only)"}
    check_before_load(request.model, Task.PROMPT_REFINE)  # an image-only model: before its load
    parsed = parse_classes(list(request.labels), [list(s) for s in request.synonyms] or None, request.colors)
    templates = check_templates(list(request.templates) or None)
    clip = resources.model(request.model)
    text = class_text_features(clip, parsed, templates, resources.text_cache)
    head = text_head(text, float(clip.logit_scale), [c.name for c in parsed], prompt_colors(parsed))
    card = {"prior": "zero-shot prompts", "prompts": {c.name: list(c.synonyms) for c in parsed},
            "templates": list(templates)}
    return head, request.model, request.tiles or api.TileOptions(), templates, None, card


def refine(
    resources: Resources,
    request: api.RefineRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.ZeroShotResult:
    """``Backend.refine``: the prior's head refitted on the user's marks, as a class map."""
    from backend.tasks.refine import check_marks_only, marked_tiles, refine

    head, model, tiles, templates, threshold, _ = prior(resources, request, "refine")
    emb = resources.embeddings(request.slide, model, tiles, progress=progress, cancel=cancel)
    idx, names = marked_tiles(emb, [(m.label, m.cells) for m in request.marks])
    if head.n_classes == 0 and names:
        check_marks_only(names, "refine")
    if request.unknown_threshold is not None:
        threshold = request.unknown_threshold
    r = refine(emb, head, idx, names, unknown_threshold=threshold, templates=templates)
    return class_map_result(resources, r.class_map, model)  # the request's model, else the classifier's


def classify(
    resources: Resources,
    request: api.ClassifyRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.ZeroShotResult:
    """``Backend.classify``: the class map a classifier bundle gives the slide of ``request``."""
    from backend.tasks.refine import head_class_map

    clf = classifier(request.classifier)
    model = classifier_model(resources, clf, request.model, progress=progress, cancel=cancel)
    tiles = request.tiles or api.TileOptions(**clf.tiles)
    # The slide's embeddings by the classifier's image tower, from the cache when they are
    # there (the registry model's, or the bundle backbone's under its own model id).
    emb = resources.embeddings(request.slide, model, tiles, region=request.region, progress=progress, cancel=cancel)
    threshold = request.unknown_threshold if request.unknown_threshold is not None else clf.unknown_threshold
    cm = head_class_map(emb, clf.head, unknown_threshold=threshold)
    return class_map_result(resources, cm, request.model or clf.model, classifier=clf.name)


def save_classifier(
    resources: Resources,
    request: api.SaveClassifierRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.ClassifierInfo:
    """Fit the refined head on the marks of every slide of ``request`` and write it as a
    classifier bundle (:mod:`backend.models.classifier`). A prior classifier with its own
    backbone passes it on: the new bundle holds a copy (the same weights, the same model id)."""
    from dataclasses import asdict

    from backend.models.classifier import BackboneSource, Classifier, load_classifier
    from backend.models.classifier import save_classifier as write_bundle
    from backend.tasks.refine import RefineConfig, check_marks_only, fit_marks, marked_tiles

    if not request.slides:
        raise InputError("save as classifier: no slide given; pass the slides the marks were made on")
    head, model, tiles, _, threshold, card = prior(resources, request, "save as classifier")
    per_slide = []
    for sm in request.slides:
        emb = resources.embeddings(sm.slide, model, tiles, progress=progress, cancel=cancel)
        idx, names = marked_tiles(emb, [(m.label, m.cells) for m in sm.marks])
        per_slide.append((emb, idx, names))
    if head.n_classes == 0:
        check_marks_only([n for _, _, names in per_slide for n in names], "save as classifier")
    config = RefineConfig()
    fitted, kept, report = fit_marks(head, per_slide, config)
    card.update(
        method="few-shot refine: logistic head pulled towards its prior (backend.tasks.refine)",
        config=asdict(config),
        marks_per_class=dict(zip(fitted.class_names, report.marks_per_class, strict=True)),
        marks_fit=report.marks_fit,
        iterations=report.iterations,
        slides=[{"name": emb.slide_name, "fingerprint": emb.slide_fingerprint, "marks": int(len(k[0]))}
                for (emb, _, _), k in zip(per_slide, kept, strict=True)],
    )
    clip = resources.model(model)
    start = classifier(request.classifier) if request.classifier is not None else None
    own = start is not None and start.backbone_source is BackboneSource.BUNDLE
    path = Path(request.path).expanduser()
    clf = Classifier(
        name=request.name or path.name,
        head=fitted,
        model=(start.trained_from or model) if own and start is not None else model,
        model_id=(start.trained_from_id or str(clip.model_id)) if own and start is not None else str(clip.model_id),
        tiles={"tile_size": tiles.tile_size, "mpp": tiles.mpp, "min_tissue": tiles.min_tissue},
        unknown_threshold=request.unknown_threshold if request.unknown_threshold is not None else threshold,
        card=card,
    )
    written = load_classifier(write_bundle(clf, path, overwrite=request.overwrite, backbone=clip if own else None))
    return api.ClassifierInfo(
        path=str(written.path), name=clf.name, labels=fitted.class_names, model=written.model,
        model_id=written.model_id, tiles=tiles, n_marks=sum(len(k[0]) for k in kept),
    )


def search_class(resources: Resources, request: api.ClassSearchRequest) -> api.SearchResult:
    """The places of a cohort index its classifier's class ``label`` scores highest: the
    class's weight direction as the query (no model is loaded). A late-fusion head is
    searched by its vision head's direction (an index holds image embeddings only)."""
    from backend.cohort_tasks import search_result
    from backend.tasks.refine import class_query

    clf = classifier(request.classifier)
    query = class_query(clf.head, request.label)
    hits = resources.on_reader(request.index_path, lambda ix: ix.search_each(query, request.k, model_id=clf.model_id)[0])
    return search_result(hits)
