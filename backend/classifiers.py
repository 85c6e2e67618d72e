"""The classifier and few-shot refinement methods of :class:`backend.local.LocalBackend`.

A mixin: :class:`ClassifierTasks` uses the backend's ``model``, ``embeddings``, ``text_cache``,
``_models`` and ``_search_open``. A classifier bundle (``backend.models.classifier``) names its
image tower: an unchanged registry model (its cached slide embeddings are all classify needs)
or the bundle's own image-only ``backbone/`` (a CLIP-IT student), loaded like any model bundle
and embedded through the same engine and cache, under its own model id. Either way the result
is zero-shot's class map, so every layer, legend and export path serves it.

Threads: as the rest of :class:`~backend.local.LocalBackend`, from any thread. Bundles are a
few KB and re-read (sha256-checked) on every call, so a re-saved bundle is never served stale;
a re-saved bundle's new backbone is loaded again (the model cache is keyed by its path).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from backend import api
from backend.errors import InputError
from backend.needs import Task, check_before_load


def geometry(layout: Any) -> api.GridGeometry:
    """A tile layout's grid as the interface's :class:`backend.api.GridGeometry`."""
    return api.GridGeometry(shape=tuple(layout.grid_shape), scale=tuple(layout.scale), translate=tuple(layout.translate))


class ClassifierTasks:
    """Classify, refine, save as classifier, search a class (mixed into LocalBackend)."""

    # Provided by LocalBackend.
    model: Any
    embeddings: Any
    text_cache: Any
    _models: Any
    _search_open: Any

    def classifier(self, path: str | os.PathLike[str]) -> Any:
        """The classifier bundle at ``path`` (a few KB, sha256-checked: read on every call, so a
        re-saved bundle is never served stale)."""
        from backend.models.classifier import load_classifier

        return load_classifier(path)

    def classifier_model(self, clf: Any, given: str | None = None, *, progress: api.ProgressCallback | None = None,
                         cancel: threading.Event | None = None) -> str:
        """The name of the model ``clf`` classifies embeddings of (``given``, else the one it
        records), loaded and checked to be the one it was trained on."""
        from backend.models.classifier import BackboneSource

        name = given or clf.model
        clip = self.model(name, progress=progress, cancel=cancel)
        if given is None and clf.backbone_source is BackboneSource.BUNDLE and str(clip.model_id) != clf.model_id:
            # The bundle was saved again at this path since its backbone was loaded: load the new one.
            self._models.discard(name)
            clip = self.model(name, progress=progress, cancel=cancel)
        clf.check_model_id(str(clip.model_id))
        return name

    def _prior(self, request: Any, what: str) -> tuple[Any, str, api.TileOptions, tuple[str, ...], float | None, dict]:
        """The head a refine/save request starts from: (head, model, tiles, templates,
        unknown threshold, card entry), from its classifier bundle or its prompts."""
        from backend.models.heads import LinearHead
        from backend.tasks.refine import text_head
        from backend.tasks.zero_shot import _colors, check_templates, class_text_features, parse_classes

        if request.classifier is not None:
            if request.labels:
                raise InputError(f"{what}: give either prompts (labels) or a classifier to start from, not both")
            clf = self.classifier(request.classifier)
            if not isinstance(clf.head, LinearHead):
                raise InputError(
                    f"{what}: classifier {clf.name!r} ({request.classifier}) has a {type(clf.head).__name__} "
                    "(late fusion); refining starts from a linear head: refine from prompts, or from a "
                    "linear classifier"
                )
            model = self.classifier_model(clf, request.model)
            tiles = request.tiles or api.TileOptions(**clf.tiles)
            card = {"prior": "classifier", "classifier": clf.name, "classifier_card": dict(clf.card)}
            return clf.head, model, tiles, (), clf.unknown_threshold, card
        if request.model is None:
            raise InputError(f"{what}: name the CLIP model (model=...) the prompts are encoded with, or give a classifier")
        if not request.labels:  # marks alone: any encoder, no zero-shot prior
            from backend.tasks.refine import marks_only_head

            head = marks_only_head(int(self.model(request.model).embed_dim))
            return head, request.model, request.tiles or api.TileOptions(), (), None, {"prior": "none (marks only)"}
        check_before_load(request.model, Task.PROMPT_REFINE)  # an image-only model: before its load
        parsed = parse_classes(list(request.labels), [list(s) for s in request.synonyms] or None, request.colors)
        templates = check_templates(list(request.templates) or None)
        clip = self.model(request.model)
        text = class_text_features(clip, parsed, templates, self.text_cache)
        head = text_head(text, float(clip.logit_scale), [c.name for c in parsed], _colors(parsed))
        card = {"prior": "zero-shot prompts", "prompts": {c.name: list(c.synonyms) for c in parsed},
                "templates": list(templates)}
        return head, request.model, request.tiles or api.TileOptions(), templates, None, card

    def refinement(
        self,
        request: api.RefineRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """:meth:`refine` returning the backend's :class:`backend.tasks.refine.Refinement`
        (the refined ClassMap for the exporters, the head, the kept marks)."""
        from backend.tasks.refine import check_marks_only, marked_tiles, refine

        head, model, tiles, templates, threshold, _ = self._prior(request, "refine")
        emb = self.embeddings(request.slide, model, tiles, progress=progress, cancel=cancel)
        idx, names = marked_tiles(emb, [(m.label, m.cells) for m in request.marks])
        if head.n_classes == 0 and names:
            check_marks_only(names, "refine")
        if request.unknown_threshold is not None:
            threshold = request.unknown_threshold
        return refine(emb, head, idx, names, unknown_threshold=threshold, templates=templates)

    def refine(
        self,
        request: api.RefineRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ZeroShotResult:
        r = self.refinement(request, progress=progress, cancel=cancel)
        model = request.model or self.classifier(request.classifier).model
        return self.class_map_result(r.class_map, model)

    def classifier_class_map(
        self,
        request: api.ClassifyRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """:meth:`classify` returning the backend's own :class:`backend.tasks.ClassMap`."""
        from backend.tasks.refine import head_class_map

        clf = self.classifier(request.classifier)
        model = self.classifier_model(clf, request.model, progress=progress, cancel=cancel)
        tiles = request.tiles or api.TileOptions(**clf.tiles)
        # The slide's embeddings by the classifier's image tower, from the cache when they are
        # there (the registry model's, or the bundle backbone's under its own model id).
        emb = self.embeddings(request.slide, model, tiles, region=request.region, progress=progress, cancel=cancel)
        threshold = request.unknown_threshold if request.unknown_threshold is not None else clf.unknown_threshold
        return head_class_map(emb, clf.head, unknown_threshold=threshold)

    def classify(
        self,
        request: api.ClassifyRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ZeroShotResult:
        cm = self.classifier_class_map(request, progress=progress, cancel=cancel)
        return self.class_map_result(cm, request.model or self.classifier(request.classifier).model)

    def class_map_result(self, cm: Any, model: str) -> api.ZeroShotResult:
        """A :class:`backend.tasks.ClassMap` as the interface's :class:`backend.api.ZeroShotResult`."""
        return api.ZeroShotResult(
            labels=tuple(cm.class_names),
            class_map=cm.label_map,
            probabilities=cm.probability_maps,
            geometry=geometry(cm.layout),
            random_weights=bool(self.model(model).random_weights),
        )

    def save_classifier(
        self,
        request: api.SaveClassifierRequest,
        *,
        progress: api.ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> api.ClassifierInfo:
        """Fit the refined head on the marks of every slide of ``request`` and write it as a
        classifier bundle (:mod:`backend.models.classifier`). A prior classifier with its own
        backbone passes it on: the new bundle holds a copy (the same weights, the same model id)."""
        from dataclasses import asdict

        from backend.models.classifier import BackboneSource, Classifier, load_classifier, save_classifier
        from backend.tasks.refine import RefineConfig, check_marks_only, fit_marks, marked_tiles

        if not request.slides:
            raise InputError("save as classifier: no slide given; pass the slides the marks were made on")
        head, model, tiles, _, threshold, card = self._prior(request, "save as classifier")
        per_slide = []
        for sm in request.slides:
            emb = self.embeddings(sm.slide, model, tiles, progress=progress, cancel=cancel)
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
        clip = self.model(model)
        prior = self.classifier(request.classifier) if request.classifier is not None else None
        own = prior is not None and prior.backbone_source is BackboneSource.BUNDLE
        path = Path(request.path).expanduser()
        clf = Classifier(
            name=request.name or path.name,
            head=fitted,
            model=(prior.trained_from or model) if own else model,
            model_id=(prior.trained_from_id or str(clip.model_id)) if own else str(clip.model_id),
            tiles={"tile_size": tiles.tile_size, "mpp": tiles.mpp, "min_tissue": tiles.min_tissue},
            unknown_threshold=request.unknown_threshold if request.unknown_threshold is not None else threshold,
            card=card,
        )
        written = load_classifier(save_classifier(clf, path, overwrite=request.overwrite, backbone=clip if own else None))
        return api.ClassifierInfo(
            path=str(written.path), name=clf.name, labels=fitted.class_names, model=written.model,
            model_id=written.model_id, tiles=tiles, n_marks=sum(len(k[0]) for k in kept),
        )

    def search_class(self, request: api.ClassSearchRequest) -> api.SearchResult:
        """The places of a cohort index its classifier's class ``label`` scores highest: the
        class's weight direction as the query (no model is loaded). A late-fusion head is
        searched by its vision head's direction (an index holds image embeddings only)."""
        from backend.local import search_result
        from backend.tasks.refine import class_query

        clf = self.classifier(request.classifier)
        query = class_query(clf.head, request.label)
        hits = self._search_open(request.index_path, lambda ix: ix.search(query, request.k, model_id=clf.model_id))
        return search_result(hits)
