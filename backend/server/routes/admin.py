"""Liveness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from backend.remote.wire import API_VERSION
from backend.server.deps import State

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/health")
async def health() -> dict[str, Any]:
    """Liveness and API version (the one route that needs no token)."""
    return {"status": "ok", "ready": True, "api_version": API_VERSION}


@router.get("/metrics")
async def metrics(state: State) -> PlainTextResponse:
    """Request counts, jobs and queue depth as Prometheus text."""
    from backend.server.metrics import render

    return PlainTextResponse(await run_in_threadpool(render, state), media_type="text/plain; version=0.0.4")
