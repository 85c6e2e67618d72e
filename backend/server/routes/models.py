"""What the server offers: the backend's models, and its capabilities (models, bundles,
classifiers, indexes, device, limits, calls)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from backend.remote.wire import API_VERSION, CALLS, encode
from backend.server.deps import State
from backend.server.state import ServerState

router = APIRouter(prefix="/v1", tags=["models"])


def _capabilities(state: ServerState) -> dict[str, Any]:
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


@router.get("/capabilities")
async def capabilities(state: State) -> dict[str, Any]:
    """API version, models, bundles, classifiers, indexes, devices, limits and calls."""
    return await run_in_threadpool(_capabilities, state)


@router.get("/models")
async def models(state: State) -> Response:
    """The backend's ``list_models()``."""
    body, media = encode(await run_in_threadpool(state.backend.list_models))
    return Response(body, media_type=media)
