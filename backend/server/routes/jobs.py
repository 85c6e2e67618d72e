"""A token's jobs: records, cancelling, the result, and progress as server-sent events
(``Last-Event-ID`` resumes a dropped stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backend.errors import InputError
from backend.server.deps import Owner, OwnJob, State
from backend.server.jobs import Job, JobState
from backend.server.responses import result_response

router = APIRouter(prefix="/v1", tags=["jobs"])
KEEPALIVE_S = 0.5  # an SSE comment this often: a client sees a dead server, and checks its cancel


@router.get("/jobs")
async def jobs(state: State, owner: Owner) -> list[dict[str, Any]]:
    """The records of the caller's jobs."""
    return [j.record() for j in state.jobs.jobs() if j.owner == owner]


@router.get("/jobs/{job_id}")
async def job(j: OwnJob) -> dict[str, Any]:
    """One job's record."""
    return j.record()


@router.delete("/jobs/{job_id}")
async def cancel(j: OwnJob, state: State) -> dict[str, Any]:
    """Cancel a job (within one batch; what was written stays cached)."""
    state.jobs.cancel(j)
    return j.record()


@router.get("/jobs/{job_id}/result")
async def result(j: OwnJob, state: State) -> Response:
    """The result of a finished job (409 while it runs)."""
    if not j.state.finished:
        return JSONResponse({"error": {"type": "HistoclipError", "message": f"job {j.id} is still {j.state}"}},
                            status_code=409)
    if j.state is JobState.DONE and j.restored:
        stored = await run_in_threadpool(state.jobs.stored_result, j)
        if stored is None:
            raise InputError(f"job {j.id}: its result was not kept over a server restart; run the call again")
        return Response(stored[0], media_type=stored[1])
    return result_response(j, state)


@router.get("/jobs/{job_id}/events")
async def events(j: OwnJob, request: Request) -> StreamingResponse:
    """Progress, state and end events of a job, from ``Last-Event-ID`` (or ``?after=``) on."""
    try:
        after = int(request.headers.get("last-event-id") or request.query_params.get("after") or 0)
    except ValueError as e:
        raise InputError(f"Last-Event-ID: expected an event number, got {request.headers.get('last-event-id')!r}") from e
    return StreamingResponse(_stream(j, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(job: Job, after: int) -> AsyncIterator[str]:
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
            except TimeoutError:
                yield ": ping\n\n"
    finally:
        job.unwatch(ev)
