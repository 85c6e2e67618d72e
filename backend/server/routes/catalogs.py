"""The cohort indexes (``--indexes``) and caption corpora (``--corpora``) a client may name."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from backend.server.deps import State

router = APIRouter(prefix="/v1", tags=["catalogs"])


@router.get("/indexes")
async def indexes(state: State) -> list[dict[str, Any]]:
    """Cohort indexes by id and root-relative name."""
    entries = await run_in_threadpool(state.indexes.entries)
    return [{"id": e.id, "name": e.relpath} for e in sorted(entries, key=lambda e: e.relpath)]


@router.get("/corpora")
async def corpora(state: State) -> list[dict[str, Any]]:
    """Caption corpora by id, root-relative name and size."""
    entries = await run_in_threadpool(state.corpora.entries)
    return [{"id": e.id, "name": e.relpath, "bytes": e.size} for e in sorted(entries, key=lambda e: e.relpath)]
