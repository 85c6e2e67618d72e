"""Slides by opaque id: the listing, one slide's description, a thumbnail and display pixels
(the dock's streamed slide layer reads its chunks from ``/region``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from backend.errors import InputError
from backend.server.deps import Audit, State

router = APIRouter(prefix="/v1", tags=["slides"])


@router.get("/slides")
async def slides(state: State) -> list[dict[str, Any]]:
    """Slides by id, root-relative name and size."""
    entries = await run_in_threadpool(state.slides.entries)
    return [{"id": e.id, "name": e.relpath, "bytes": e.size} for e in sorted(entries, key=lambda e: e.relpath)]


# The two routes below come before /slides/{slide_id:path}, which would match their paths too.
@router.get("/slides/{slide_id:path}/thumbnail")
async def thumbnail(slide_id: str, state: State, audit: Audit, size: int = 1024) -> Response:
    """A PNG overview, ``size`` pixels on its long side (16 to 2048)."""
    audit["slide"] = slide_id[:64]
    if not 16 <= size <= 2048:
        raise InputError(f"size: a thumbnail is 16 to 2048 pixels on its long side, got {size}")

    def render() -> bytes:
        from backend.server.pixels import TileFormat, encode_tile

        with state.pixels.slide(state.slides.resolve(slide_id)) as s:
            return encode_tile(s.thumbnail(size), TileFormat.PNG)

    return Response(await run_in_threadpool(render), media_type="image/png")


@router.get("/slides/{slide_id:path}/region")
async def region(slide_id: str, state: State, audit: Audit, level: int, x: int, y: int, w: int, h: int,
                 format: str = "png") -> Response:
    """Pixels of one level for display (the dock's streamed slide layer reads its chunks here)."""
    from backend.server.pixels import MEDIA, TileFormat, check_region, encode_tile

    audit["slide"] = slide_id[:64]
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


@router.get("/slides/{slide_id:path}")
async def slide(slide_id: str, state: State, audit: Audit) -> dict[str, Any]:
    """One slide: id, name, size, mpp, level sizes and downsamples, fingerprint."""
    audit["slide"] = slide_id[:64]

    def describe() -> dict[str, Any]:
        entry = state.slides.lookup(slide_id)
        with state.pixels.slide(state.slides.resolve(slide_id)) as s:
            return {"id": entry.id, "name": entry.relpath, "bytes": entry.size, "mpp": s.mpp,
                    "levels": [list(d) for d in s.level_dimensions],
                    "downsamples": [float(d) for d in s.level_downsamples], "fingerprint": s.fingerprint}

    return await run_in_threadpool(describe)
