"""``POST /v1/calls/ROUTE``: a :class:`~backend.api.Backend` call (see
:data:`backend.remote.wire.CALLS`), answered with its result when it finishes within the
client's wait (``Prefer: wait=SECONDS``), else 202 with a job to follow."""

from __future__ import annotations

import asyncio
import re
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from backend.errors import InputError
from backend.remote.wire import CALLS, decode
from backend.server.deps import Audit, Owner, State, Token
from backend.server.jobs import Job, Priority, QueueFullError
from backend.server.responses import result_response, too_busy

router = APIRouter(prefix="/v1", tags=["calls"])


def wait_of(prefer: str | None, cap: float) -> float:
    """Seconds to wait for an answer: ``Prefer: wait=N`` (at most ``cap``), 0 for
    ``respond-async`` alone, else ``cap``."""
    match = re.search(r"\bwait=(\d+(?:\.\d+)?)", prefer or "")
    if prefer and "respond-async" in prefer and not match:
        return 0.0
    return min(float(match.group(1)), cap) if match else cap


async def until_finished(job: Job, timeout: float) -> None:
    """Return when ``job`` finishes or ``timeout`` seconds have passed, whichever is first."""
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
            except TimeoutError:
                return
    finally:
        job.unwatch(ev)


@router.post("/calls/{route}", status_code=200)
async def call(route: str, request: Request, state: State, token: Token, owner: Owner, audit: Audit) -> Response:
    """Decode, check and localise the request, queue it as a job, answer or hand back the job."""
    spec = CALLS.get(route)
    if spec is None:
        raise InputError(f"call {route[:64]!r}: no such call; calls are {', '.join(CALLS)}")
    audit["call"] = route
    body = await request.body()
    req = decode(spec.request, body, request.headers.get("content-type", ""), where=route)
    state.check_limits(req, route)
    audit["slide"] = state.slide_of(req)
    local = await run_in_threadpool(state.localize, req)
    await run_in_threadpool(state.check_work, local, route)  # the work, estimated before any allocation
    try:
        job = state.jobs.submit(route, lambda j: state.run(spec, local, j), token=token, owner=owner,
                                slide=state.slide_of(req),
                                priority=Priority.BULK if spec.bulk else Priority.INTERACTIVE)
    except QueueFullError as e:
        return too_busy(e, state.config.limits.retry_after_s)
    wait = 0.0 if spec.bulk else wait_of(request.headers.get("prefer"), state.config.direct_wait_s)
    if wait > 0:
        await until_finished(job, wait)
    if job.state.finished:
        state.jobs.forget(job)  # answered at once: no job record
        return result_response(job, state)
    await run_in_threadpool(state.jobs.persist, job)
    return JSONResponse(job.record(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})
