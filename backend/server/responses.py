"""Error and result bodies shared by the routers (the wire format is :mod:`backend.remote.wire`)."""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response

from backend.remote.wire import encode, error_to_wire
from backend.server.jobs import Job, JobState, QueueFullError
from backend.server.state import ServerState


def error_response(exc: BaseException, state: ServerState | None = None) -> JSONResponse:
    """``exc`` as its status and ``{"error": ...}`` body; with ``state``, server paths in it
    become ids and no server path is left in its text."""
    status, body = error_to_wire(exc)
    if state is not None:
        body["error"] = state.public_error(body["error"])
    return JSONResponse(body, status_code=status)


def too_busy(e: QueueFullError, retry_after: int) -> JSONResponse:
    """429 with ``Retry-After``: the job queue (or this token's share of it) is full."""
    body = {"error": {"type": "LimitError", "message": f"server busy: {e}; retry in {retry_after} s"}}
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(retry_after)})


def result_response(job: Job, state: ServerState) -> Response:
    """A finished job's answer: its encoded result, its error, or 409 when it did not finish."""
    if job.state is JobState.DONE:
        body, media = encode(job.result)
        return Response(body, media_type=media)
    if job.exc is not None:
        return error_response(job.exc, state)
    return JSONResponse({"error": job.error or {"type": "HistoclipError", "message": f"job {job.id} is {job.state}"}},
                        status_code=409)
