"""The FastAPI app of ``histoclip serve``: routes under ``/v1``, a guard in front of them.

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

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from backend.errors import HistoclipError, InputError
import numpy as np

from backend.remote.wire import (
    API_VERSION, CALLS, EncodeImageRequest, EncodeResult, EncodeTextRequest, decode, encode, error_to_wire,
)
from backend.server.config import ServerConfig
from backend.server.guard import Guard
from backend.server.jobs import Job, JobState, Priority, QueueFullError
from backend.server.state import ServerState

log = logging.getLogger("histoclip.server")
KEEPALIVE_S = 0.5  # an SSE comment this often: a client sees a dead server, and checks its cancel


def _error(exc: BaseException, state: ServerState | None = None) -> JSONResponse:
    status, body = error_to_wire(exc)
    if state is not None:  # ids for paths, and no server path in the text
        body["error"] = state.public_error(body["error"])
    return JSONResponse(body, status_code=status)


def _too_busy(e: QueueFullError, retry_after: int) -> JSONResponse:
    body = {"error": {"type": "LimitError", "message": f"server busy: {e}; retry in {retry_after} s"}}
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})


def _wait_of(prefer: str | None, cap: float) -> float:
    match = re.search(r"\bwait=(\d+(?:\.\d+)?)", prefer or "")
    if prefer and "respond-async" in prefer and not match:
        return 0.0
    return min(float(match.group(1)), cap) if match else cap


def _result_response(job: Job, state: ServerState) -> Response:
    if job.state is JobState.DONE:
        body, media = encode(job.result)
        return Response(body, media_type=media)
    if job.exc is not None:
        return _error(job.exc, state)
    return JSONResponse({"error": job.error or {"type": "HistoclipError", "message": f"job {job.id} is {job.state}"}},
                        status_code=409)


async def _until_finished(job: Job, timeout: float) -> None:
    ev = job.watch()
    try:
        deadline = time.monotonic() + timeout
        while not job.state.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ev.clear()
            try:
                await asyncio.wait_for(ev.wait(), left)
            except asyncio.TimeoutError:
                return
    finally:
        job.unwatch(ev)


def create_app(config: ServerConfig, *, backend: Any | None = None) -> FastAPI:
    """The server app for ``config``; ``backend`` (default: a new LocalBackend) does the work."""
    state = ServerState(config, backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        state.close()

    app = FastAPI(title="histoclip", version=API_VERSION, openapi_url="/v1/openapi.json", docs_url="/v1/docs",
                  redoc_url=None, lifespan=lifespan)
    app.state.histoclip = state
    app.add_middleware(Guard, state=state)

    def own_job(request: Request, job_id: str) -> Job:
        job = state.jobs.get(job_id)
        if job is None or job.owner != request.state.owner:  # another token's job does not exist for you
            raise _NotFound(f"job {job_id[:64]!r}: no such job for this token (see /v1/jobs)")
        return job

    @app.exception_handler(HistoclipError)
    async def _on_error(request: Request, exc: HistoclipError) -> JSONResponse:
        return _error(exc, state)

    @app.exception_handler(_NotFound)
    async def _on_missing(request: Request, exc: _NotFound) -> JSONResponse:
        return JSONResponse({"error": {"type": "HistoclipError", "message": str(exc)}}, status_code=404)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "ready": True, "api_version": API_VERSION}

    @app.get("/v1/capabilities")
    async def capabilities() -> dict[str, Any]:
        def gather() -> dict[str, Any]:
            from dataclasses import asdict

            from backend.device import pick_device
            from backend.needs import model_capabilities
            from backend.server.classifiers import classifier_listing

            return {
                "api_version": API_VERSION,
                "models": [asdict(m) for m in state.backend.list_models()],
                "bundles": [{"id": e.id, "name": e.relpath, "capabilities": list(model_capabilities(e.path))}
                            for e in state.bundles.entries()],
                "classifiers": classifier_listing(state),  # classes and backbone of the classifier bundles
                "indexes": [{"id": e.id, "name": e.relpath} for e in state.indexes.entries()],
                "device": str(pick_device(state.config.device)),
                "workers": state.config.workers,
                "limits": asdict(state.config.limits),
                "calls": {c.route: {"method": c.method, "bulk": c.bulk} for c in CALLS.values()},
            }

        return await run_in_threadpool(gather)

    @app.get("/v1/models")
    async def models() -> Response:
        body, media = encode(await run_in_threadpool(state.backend.list_models))
        return Response(body, media_type=media)

    @app.get("/v1/slides")
    async def slides() -> list[dict[str, Any]]:
        entries = await run_in_threadpool(state.slides.entries)
        return [{"id": e.id, "name": e.relpath, "bytes": e.size} for e in sorted(entries, key=lambda e: e.relpath)]

    @app.get("/v1/slides/{slide_id:path}/thumbnail")
    async def thumbnail(slide_id: str, request: Request, size: int = 1024) -> Response:
        request.state.audit["slide"] = slide_id[:64]
        if not 16 <= size <= 2048:
            raise InputError(f"size: a thumbnail is 16 to 2048 pixels on its long side, got {size}")

        def render() -> bytes:
            from backend.server.pixels import TileFormat, encode_tile

            with state.pixels.slide(state.slides.resolve(slide_id)) as s:
                return encode_tile(s.thumbnail(size), TileFormat.PNG)

        return Response(await run_in_threadpool(render), media_type="image/png")

    @app.get("/v1/slides/{slide_id:path}/region")
    async def region(slide_id: str, request: Request, level: int, x: int, y: int, w: int, h: int,
                     format: str = "png") -> Response:
        """Pixels of one level for display (the dock's streamed slide layer reads its chunks here)."""
        from backend.server.pixels import MEDIA, TileFormat, check_region, encode_tile

        request.state.audit["slide"] = slide_id[:64]
        try:
            fmt = TileFormat(format)
        except ValueError as e:
            raise InputError(f"format: {format[:20]!r} is not one of {', '.join(TileFormat)}") from e

        def read() -> bytes:
            with state.pixels.slide(state.slides.resolve(slide_id)) as s:
                check_region(s, level, x, y, w, h, state.config.limits.max_tile_pixels)
                return encode_tile(s.read_region((x, y), level, (w, h)), fmt)

        return Response(await run_in_threadpool(read), media_type=MEDIA[fmt],
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/slides/{slide_id:path}")
    async def slide(slide_id: str, request: Request) -> dict[str, Any]:
        request.state.audit["slide"] = slide_id[:64]

        def describe() -> dict[str, Any]:
            entry = state.slides.lookup(slide_id)
            with state.pixels.slide(state.slides.resolve(slide_id)) as s:
                return {"id": entry.id, "name": entry.relpath, "bytes": entry.size, "mpp": s.mpp,
                        "levels": [list(d) for d in s.level_dimensions],
                        "downsamples": [float(d) for d in s.level_downsamples], "fingerprint": s.fingerprint}

        return await run_in_threadpool(describe)

    @app.get("/v1/corpora")
    async def corpora() -> list[dict[str, Any]]:
        entries = await run_in_threadpool(state.corpora.entries)
        return [{"id": e.id, "name": e.relpath, "bytes": e.size} for e in sorted(entries, key=lambda e: e.relpath)]

    @app.get("/v1/indexes")
    async def indexes() -> list[dict[str, Any]]:
        entries = await run_in_threadpool(state.indexes.entries)
        return [{"id": e.id, "name": e.relpath} for e in sorted(entries, key=lambda e: e.relpath)]

    @app.post("/v1/calls/{route}", status_code=200)
    async def call(route: str, request: Request) -> Response:
        spec = CALLS.get(route)
        if spec is None:
            raise InputError(f"call {route[:64]!r}: no such call; calls are {', '.join(CALLS)}")
        request.state.audit["call"] = route
        body = await request.body()
        req = decode(spec.request, body, request.headers.get("content-type", ""), where=route)
        state.check_limits(req, route)
        request.state.audit["slide"] = state.slide_of(req)
        local = await run_in_threadpool(state.localize, spec, req)
        await run_in_threadpool(state.check_work, local, route)  # the work, estimated before any allocation
        try:
            job = state.jobs.submit(route, lambda j: state.run(spec, local, j), token=request.state.token,
                                    owner=request.state.owner, slide=state.slide_of(req),
                                    priority=Priority.BULK if spec.bulk else Priority.INTERACTIVE)
        except QueueFullError as e:
            return _too_busy(e, state.config.limits.retry_after_s)
        wait = 0.0 if spec.bulk else _wait_of(request.headers.get("prefer"), state.config.direct_wait_s)
        if wait > 0:
            await _until_finished(job, wait)
        if job.state.finished:
            state.jobs.forget(job)  # answered at once: no job record
            return _result_response(job, state)
        await run_in_threadpool(state.jobs.persist, job)
        return JSONResponse(job.record(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.post("/v1/encode/{kind}")
    async def encode_items(kind: str, request: Request) -> Response:
        """Embed texts or uploaded RGB crops; items of concurrent requests share model calls."""
        kinds = {"text": EncodeTextRequest, "image": EncodeImageRequest}
        if kind not in kinds:
            raise InputError(f"encode/{kind[:32]}: encode 'text' or 'image'")
        request.state.audit["call"] = f"encode-{kind}"
        req = decode(kinds[kind], await request.body(), request.headers.get("content-type", ""), where=f"encode-{kind}")
        items = list(req.texts) if kind == "text" else _crops(req.images, state.config.limits)
        if not items or len(items) > state.config.limits.max_regions:
            raise InputError(f"encode-{kind}: {len(items)} items; between 1 and {state.config.limits.max_regions} per request")
        model = await run_in_threadpool(state.model, req.model)
        if kind == "text":  # an image-only model: refused before its load
            from backend.needs import Task, check_before_load

            await run_in_threadpool(check_before_load, model, Task.TEXT_EMBED)
        batcher = state.batcher.get(kind, model)
        vectors = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(item)) for item in items))
        clip = await run_in_threadpool(state.backend.model, model)
        body, media = encode(EncodeResult(np.stack(vectors), str(clip.model_id)))
        return Response(body, media_type=media)

    @app.get("/v1/jobs")
    async def jobs(request: Request) -> list[dict[str, Any]]:
        return [j.record() for j in state.jobs.jobs() if j.owner == request.state.owner]

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str, request: Request) -> dict[str, Any]:
        return own_job(request, job_id).record()

    @app.delete("/v1/jobs/{job_id}")
    async def cancel(job_id: str, request: Request) -> dict[str, Any]:
        j = own_job(request, job_id)
        state.jobs.cancel(j)
        return j.record()

    @app.get("/v1/jobs/{job_id}/result")
    async def result(job_id: str, request: Request) -> Response:
        j = own_job(request, job_id)
        if not j.state.finished:
            return JSONResponse({"error": {"type": "HistoclipError", "message": f"job {j.id} is still {j.state}"}},
                                status_code=409)
        if j.state is JobState.DONE and j.restored:
            stored = await run_in_threadpool(state.jobs.stored_result, j)
            if stored is None:
                raise InputError(f"job {j.id}: its result was not kept over a server restart; run the call again")
            return Response(stored[0], media_type=stored[1])
        return _result_response(j, state)

    @app.get("/v1/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        j = own_job(request, job_id)
        try:
            after = int(request.headers.get("last-event-id") or request.query_params.get("after") or 0)
        except ValueError as e:
            raise InputError(f"Last-Event-ID: expected an event number, got {request.headers.get('last-event-id')!r}") from e
        return StreamingResponse(_stream(j, after), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/metrics")
    async def metrics() -> PlainTextResponse:
        from backend.server.metrics import render

        return PlainTextResponse(await run_in_threadpool(render, state), media_type="text/plain; version=0.0.4")

    return app


class _NotFound(Exception):
    pass


def _crops(images: np.ndarray, limits: Any) -> list[np.ndarray]:
    """The uploaded crops, checked: uint8 RGB, (H, W, 3) or (B, H, W, 3), within the pixel cap."""
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"encode-image.images: expected uint8 (B, H, W, 3) RGB, got {images.dtype} {images.shape}")
    b, h, w, _ = images.shape
    if min(h, w) < 8 or h * w > limits.max_region_pixels:
        raise InputError(f"encode-image.images: crops of {w} x {h} pixels; between 8 and {limits.max_region_pixels} pixels each")
    return list(images)


async def _stream(job: Job, after: int) -> Any:
    ev = job.watch()
    try:
        sent = max(0, after)
        while True:
            ev.clear()
            batch = job.events[sent:]
            for e in batch:
                yield f"id: {e['id']}\nevent: {e['event']}\ndata: {json.dumps(e['data'])}\n\n"
                sent = e["id"]
                if e["event"] == "end":
                    return
            try:
                await asyncio.wait_for(ev.wait(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield ": ping\n\n"
    finally:
        job.unwatch(ev)


__all__ = ["ServerConfig", "create_app"]
