"""Captions (from a captioner bundle or a corpus) and caption grounding as an in-process
backend runs them.

:class:`backend.local.LocalBackend`'s ``caption``, ``corpus_caption`` and ``ground`` are one
line each over these functions, which take the :class:`backend.resources.Resources` holder
for what it holds (models, captioners, the embedding cache, open corpus indexes, the
text-feature cache) and return the interface's plain results.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backend import api
from backend.errors import InputError
from backend.resources import Resources, check_cancel

if TYPE_CHECKING:
    from backend.caption.corpus_index import CorpusIndex, CorpusSpec
    from backend.models.encoder import Encoder


def _text_model(resources: Resources, name: str, task: str, progress: api.ProgressCallback | None,
                cancel: threading.Event | None) -> Encoder:
    """The loaded model ``name``, refused before loading when its entry embeds images only."""
    from backend.models import resolve_model
    from backend.models.registry import Capability, require_capability

    require_capability(resolve_model(name), Capability.TEXT, task)
    return resources.model(name, progress=progress, cancel=cancel)


def caption(
    resources: Resources,
    request: api.CaptionRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.CaptionResult:
    """Each region's n-best captions by a captioner bundle (``Backend.caption``)."""
    from backend.caption import DecodeConfig
    from backend.embed.region import pool

    if not request.regions:
        raise InputError("caption: no region given; draw a rectangle or polygon first")
    # The bundle records the CLIP model it was trained on: the default, and the check.
    trained_with = resources.captioner_model(request.captioner)
    clip = resources.recorded_model(
        request.model, trained_with, trained_with, f"captioner {request.captioner}", progress, cancel
    )
    model = request.model or trained_with
    captioner = resources.captioner(request.captioner, str(clip.model_id))
    vectors = []
    for region in request.regions:
        emb = resources.embeddings(request.slide, model, request.tiles, region=region, progress=progress, cancel=cancel)
        vectors.append(pool(emb.vectors))
    check_cancel(cancel, "caption")
    config = DecodeConfig(num_beams=request.beams, n_best=request.n_best, max_new_tokens=request.max_tokens)
    captions = captioner.caption(np.stack(vectors), model_id=str(clip.model_id), config=config)
    return api.CaptionResult(captions=tuple(captions))


def open_corpus(
    resources: Resources,
    spec: CorpusSpec,
    clip: Encoder,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CorpusIndex:
    """The corpus index of ``spec`` (a :class:`~backend.caption.corpus_index.CorpusSpec`) for
    the loaded ``clip``: held open once per file state, else opened or built under the cache."""
    from backend.caption.corpus_index import build_corpus_index

    path = Path(spec.path).expanduser()
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise InputError(f"{spec.path}: corpus file not found") from e
    except OSError as e:
        raise InputError(f"{spec.path}: cannot read the corpus ({e})") from e
    # Keyed by the file's state, so a caption does not hash a large corpus every time; an
    # edited file (new mtime or size) is hashed again and finds or builds its own index.
    key = "\0".join(map(str, (path.resolve(), st.st_mtime_ns, st.st_size, spec.text_column, spec.source_column,
                              spec.id_column, clip.model_id)))
    # Held with the backend's other read-only indexes: made once per key, closed by its close().
    return resources.corpus_index(key, lambda: build_corpus_index(
        spec, clip, corpora_root(resources), progress=progress, cancel=cancel))


def corpora_root(resources: Resources) -> Path:
    """Where a backend's corpus indexes are built: ``corpora/`` beside its embedding cache."""
    return Path(resources.cache.root).parent / "corpora"


def corpus_caption(
    resources: Resources,
    request: api.CorpusCaptionRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.CaptionResult:
    """Each region's n-best corpus captions (see :class:`backend.api.CorpusCaptionRequest`)."""
    from backend.caption.corpus import corpus_captions
    from backend.caption.corpus_index import CorpusSpec
    from backend.embed.region import pool

    if not request.regions:
        raise InputError("caption: no region given; draw a rectangle or polygon first")
    if request.n_best < 1:
        raise InputError(f"n_best: must be at least 1, got {request.n_best}")
    clip = _text_model(resources, request.model, "captions from a corpus", progress, cancel)
    spec = CorpusSpec(request.corpus, request.text_column, request.source_column, request.id_column)
    index = open_corpus(resources, spec, clip, progress=progress, cancel=cancel)
    vectors = []
    for region in request.regions:
        emb = resources.embeddings(request.slide, request.model, request.tiles, region=region, progress=progress,
                                 cancel=cancel)
        vectors.append(pool(emb.vectors))
    check_cancel(cancel, "caption")
    return api.CaptionResult(captions=tuple(corpus_captions(index, np.stack(vectors), request.n_best)))


def ground(
    resources: Resources,
    request: api.GroundingRequest,
    *,
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> api.GroundingResult:
    """Per-tile support maps of a caption and its noun phrases inside a region."""
    from backend.tasks.grounding import Grounding, GroundingMethod, check_caption, ground_by_similarity
    from backend.tasks.results import geometry
    from backend.text.phrases import noun_phrases

    caption = check_caption(request.caption)
    if request.top_k < 1:
        raise InputError(f"top_k: must be at least 1, got {request.top_k}")
    phrases = noun_phrases(caption) if request.phrases else []
    if request.captioner is not None:
        from backend.caption.attribution import leave_one_out_support

        trained_with = resources.captioner_model(request.captioner)
        clip = resources.recorded_model(request.model, trained_with, trained_with, f"captioner {request.captioner}",
                                       progress, cancel)
        model = request.model or trained_with
        captioner = resources.captioner(request.captioner, str(clip.model_id))
        emb = resources.embeddings(request.slide, model, request.tiles, region=request.region, progress=progress,
                                 cancel=cancel)
        check_cancel(cancel, "grounding")
        support = leave_one_out_support(captioner, emb.vectors, caption, [(p.start, p.end) for p in phrases])
        grounding = Grounding(caption, tuple(p.text for p in phrases), GroundingMethod.LEAVE_ONE_OUT, support,
                              emb.layout)
    else:
        if request.model is None:
            raise InputError("grounding: give the vision-language model (or a captioner bundle for a ClipCap caption)")
        clip = _text_model(resources, request.model, "grounding a caption", progress, cancel)
        emb = resources.embeddings(request.slide, request.model, request.tiles, region=request.region,
                                 progress=progress, cancel=cancel)
        check_cancel(cancel, "grounding")
        grounding = ground_by_similarity(emb.layout, emb.vectors, caption, [p.text for p in phrases],
                                         lambda texts: resources.text_cache.encode(clip, texts))
    return api.GroundingResult(
        caption=caption,
        method=str(grounding.method),
        phrases=grounding.phrases,
        maps=grounding.maps,
        top_cells=grounding.top_cells(request.top_k),
        geometry=geometry(emb.layout),
        random_weights=bool(clip.random_weights),
    )
