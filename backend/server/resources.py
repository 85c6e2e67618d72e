"""Which request fields name a server resource, declared per request type.

A client never sends a server path: a slide, bundle, index or corpus is named by its catalog id
or listed name, and the server swaps in the path (:meth:`ServerState.localize`). Which fields
those are is declared here, one entry per request type, and nowhere guessed from a field's
name: a field a table entry does not declare reaches the backend as the client sent it, and a
request type with no entry is refused (so a new call is served only once its resource fields
are declared; ``tests/server/test_server_resources.py`` checks every call's type has an entry).

Nested dataclasses (a :class:`~backend.api.SlideRef` in any request, the
:class:`~backend.api.SlideMarks` of a saved classifier) are walked the same way: their own
entry says what they hold; an undeclared field is searched for declared dataclasses inside it.
"""

from __future__ import annotations

from enum import StrEnum

from backend import api
from backend.remote.wire import EmbedRequest


class Resource(StrEnum):
    """What a declared field names, hence which catalog resolves it."""

    SLIDE = "slide"  # a slide id or listed name (--slides)
    SLIDES = "slides"  # slide ids, listed names or listed folders: every slide under them
    MODEL = "model"  # a registry name, a bundle under --models, an hf-hub: id when allowed
    BUNDLE = "bundle"  # a bundle under --models (a captioner, a classifier)
    NEW_BUNDLE = "new-bundle"  # a plain folder name for a bundle written in the first --models folder
    INDEX = "index"  # a listed cohort index (--indexes)
    NEW_OR_INDEX = "new-or-index"  # a listed index (resumed), or a plain name for a new one
    CORPUS = "corpus"  # a listed caption corpus (--corpora)


R = Resource
REQUEST_RESOURCES: dict[type, dict[str, Resource]] = {
    # Parts of requests.
    api.SlideRef: {"path": R.SLIDE},
    api.SlideMarks: {},  # its slide is a SlideRef
    api.Region: {},
    api.TileOptions: {},
    api.TileMarks: {},
    # The requests of backend.remote.wire.CALLS.
    EmbedRequest: {"model": R.MODEL},
    api.ZeroShotRequest: {"model": R.MODEL},
    api.HeatmapRequest: {"model": R.MODEL},
    api.CaptionRequest: {"captioner": R.BUNDLE, "model": R.MODEL},
    api.CorpusCaptionRequest: {"corpus": R.CORPUS, "model": R.MODEL},
    api.GroundingRequest: {"captioner": R.BUNDLE, "model": R.MODEL},
    api.IndexRequest: {"slides": R.SLIDES, "index_path": R.NEW_OR_INDEX, "model": R.MODEL},
    api.SearchRequest: {"index_path": R.INDEX, "model": R.MODEL},
    api.SlideZeroShotRequest: {"classifier": R.BUNDLE, "model": R.MODEL},
    api.SlideSearchRequest: {"index_path": R.INDEX, "model": R.MODEL},
    api.RefineRequest: {"classifier": R.BUNDLE, "model": R.MODEL},
    api.ClassifyRequest: {"classifier": R.BUNDLE, "model": R.MODEL},
    api.SaveClassifierRequest: {"path": R.NEW_BUNDLE, "classifier": R.BUNDLE, "model": R.MODEL},
    api.ClassSearchRequest: {"index_path": R.INDEX, "classifier": R.BUNDLE},
}


def declared(cls: type) -> dict[str, Resource]:
    """The resource fields of request type ``cls``; raises when the type declares none."""
    try:
        return REQUEST_RESOURCES[cls]
    except KeyError:
        raise TypeError(
            f"{cls.__name__}: not served; declare which of its fields name slides, bundles, indexes "
            "or corpora in backend.server.resources.REQUEST_RESOURCES (an empty entry if none)"
        ) from None


__all__ = ["REQUEST_RESOURCES", "Resource", "declared"]
