"""``POST /v1/encode/text|image``: embed texts or uploaded RGB crops; the items of concurrent
requests share model calls (:mod:`backend.server.batching`)."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from backend.errors import InputError
from backend.remote.wire import (
    EncodeImageRequest,
    EncodeResult,
    EncodeTextRequest,
    decode,
    encode,
)
from backend.server.config import Limits
from backend.server.deps import Audit, State

router = APIRouter(prefix="/v1", tags=["encode"])
KINDS = {"text": EncodeTextRequest, "image": EncodeImageRequest}


def crops(images: np.ndarray, limits: Limits) -> list[np.ndarray]:
    """The uploaded crops, checked: uint8 RGB, (H, W, 3) or (B, H, W, 3), within the pixel cap."""
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"encode-image.images: expected uint8 (B, H, W, 3) RGB, got {images.dtype} {images.shape}")
    _, h, w, _ = images.shape
    if min(h, w) < 8 or h * w > limits.max_region_pixels:
        raise InputError(f"encode-image.images: crops of {w} x {h} pixels; between 8 and {limits.max_region_pixels} pixels each")
    return list(images)


@router.post("/encode/{kind}")
async def encode_items(kind: str, request: Request, state: State, audit: Audit) -> Response:
    """Embed texts or uploaded RGB crops; items of concurrent requests share model calls."""
    if kind not in KINDS:
        raise InputError(f"encode/{kind[:32]}: encode 'text' or 'image'")
    audit["call"] = f"encode-{kind}"
    req = decode(KINDS[kind], await request.body(), request.headers.get("content-type", ""), where=f"encode-{kind}")
    items = list(req.texts) if kind == "text" else crops(req.images, state.config.limits)
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
