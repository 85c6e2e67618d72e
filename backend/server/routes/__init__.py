"""The server's routes, one router per responsibility (all under ``/v1``; see
:mod:`backend.server.app` for the table):

- :mod:`.admin`: health and metrics;
- :mod:`.models`: the backend's models and the server's capabilities;
- :mod:`.slides`: slide listing and description, thumbnails and display pixels;
- :mod:`.catalogs`: cohort indexes and caption corpora;
- :mod:`.calls`: ``Backend`` calls, answered at once or as jobs;
- :mod:`.encode`: text and image embedding, batched across clients;
- :mod:`.jobs`: job records, events, results and cancelling.
"""

from __future__ import annotations

from fastapi import APIRouter


def routers() -> list[APIRouter]:
    """Every router of the server, in the order the app includes them."""
    from backend.server.routes import (
        admin,
        calls,
        catalogs,
        encode,
        jobs,
        models,
        slides,
    )

    return [admin.router, models.router, slides.router, catalogs.router, calls.router, encode.router, jobs.router]
