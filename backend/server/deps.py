"""What a route is given, the FastAPI way (``Depends``): the server's state, the caller's
identity as the :class:`~backend.server.guard.Guard` established it, the audit record of the
request, and a job of the caller's.

The guard stays an ASGI middleware (it also covers the schema, the docs and unknown paths);
these dependencies hand a route what it established, so no route reaches into
``request.state`` or a closure.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from backend.server.jobs import Job
from backend.server.state import ServerState


class NotFoundError(Exception):
    """A resource of this token that does not exist: 404 (see :func:`backend.server.app.create_app`)."""


def server_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    return request.app.state.histoclip


def caller_owner(request: Request) -> str:
    """The never-reused id of the caller's token (what owns jobs), set by the guard."""
    return request.state.owner


def caller_token(request: Request) -> str:
    """The name of the caller's token (for audit lines and job records), set by the guard."""
    return request.state.token


def audit_record(request: Request) -> dict[str, Any]:
    """The audit line of this request, filled in by the route (``call``, ``slide``)."""
    return request.state.audit


State = Annotated[ServerState, Depends(server_state)]
Owner = Annotated[str, Depends(caller_owner)]
Token = Annotated[str, Depends(caller_token)]
Audit = Annotated[dict[str, Any], Depends(audit_record)]


def own_job(job_id: str, state: State, owner: Owner) -> Job:
    """Job ``job_id`` of the caller; another token's job does not exist for them (404)."""
    job = state.jobs.get(job_id)
    if job is None or job.owner != owner:
        raise NotFoundError(f"job {job_id[:64]!r}: no such job for this token (see /v1/jobs)")
    return job


OwnJob = Annotated[Job, Depends(own_job)]
