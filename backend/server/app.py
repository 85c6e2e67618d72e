"""The FastAPI app of ``histoclip serve``: routers under ``/v1`` (:mod:`backend.server.routes`),
a guard in front of them.

The event loop only parses, checks and answers: every backend call runs on a job worker
thread (see :mod:`backend.server.jobs`), and file-system walks run in the thread pool, so
``/v1/health`` answers at once while a slide embeds.

Routes (all but ``/v1/health`` need ``Authorization: Bearer TOKEN``)::

    GET    /v1/health                 liveness and API version
    GET    /v1/capabilities           API version, models, bundles, classifiers, indexes, devices, limits, calls
    GET    /v1/models                 the Backend's list_models()
    GET    /v1/slides, /v1/slides/ID  slides by opaque id (relative path, size; mpp, levels)
    GET    /v1/slides/ID/thumbnail    a PNG overview (``?size=`` long side, at most 2048)
    GET    /v1/slides/ID/region       display pixels: ``?level=&x=&y=&w=&h=[&format=png|jpeg]``
                                      (x, y level-0; w, h pixels of the level), PNG or JPEG
    GET    /v1/indexes                cohort indexes by id
    GET    /v1/corpora                caption corpora (--corpora) by id
    POST   /v1/calls/ROUTE            a Backend call (see backend.remote.wire.CALLS): 200 with
                                      the result when it finishes within the client's wait
                                      (``Prefer: wait=SECONDS``), else 202 with a job
    POST   /v1/encode/text|image      embed texts or uploaded crops (batched across clients)
    GET    /v1/jobs, /v1/jobs/ID      job records of this token
    GET    /v1/jobs/ID/events         server-sent events (progress, state, end); Last-Event-ID resumes
    GET    /v1/jobs/ID/result         the result of a finished job
    DELETE /v1/jobs/ID                cancel (within one batch; what was written stays cached)
    GET    /v1/metrics                Prometheus text
    GET    /v1/openapi.json, /v1/docs the schema
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.errors import HistoclipError
from backend.remote.wire import API_VERSION
from backend.server.config import ServerConfig
from backend.server.deps import NotFoundError
from backend.server.guard import Guard
from backend.server.responses import error_response
from backend.server.state import ServerState


def create_app(config: ServerConfig, *, backend: Any | None = None) -> FastAPI:
    """The server app for ``config``; ``backend`` (default: a new LocalBackend) does the work.

    The app holds its :class:`ServerState` (``app.state.histoclip``); the routers get it, the
    caller's token and their job through the dependencies of :mod:`backend.server.deps`.
    """
    from backend.server.routes import routers

    state = ServerState(config, backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="histoclip", version=API_VERSION, openapi_url="/v1/openapi.json", docs_url="/v1/docs",
                  redoc_url=None, lifespan=lifespan)
    app.state.histoclip = state
    app.add_middleware(Guard, state=state)

    @app.exception_handler(HistoclipError)
    async def _on_error(request: Request, exc: HistoclipError) -> JSONResponse:
        return error_response(exc, state)

    @app.exception_handler(NotFoundError)
    async def _on_missing(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"error": {"type": "HistoclipError", "message": str(exc)}}, status_code=404)

    for router in routers():
        app.include_router(router)
    return app


__all__ = ["ServerConfig", "create_app"]
