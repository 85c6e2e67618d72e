"""A real server on 127.0.0.1 for the server and client tests (uvicorn in a thread; no HTTP mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import api

TILES = api.TileOptions(tile_size=64, mpp=2.0)


def serve(app: Any) -> Any:
    """Run ``app`` on a free loopback port in a thread; a context manager yielding its URL."""
    from backend.server.threaded import serve_in_thread

    return serve_in_thread(app)


@dataclass
class Running:
    url: str
    token: str
    app: Any
    state_dir: Path

    @property
    def state(self) -> Any:
        return self.app.state.histoclip

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def running_server(tmp: Path, slide_roots: tuple[Path, ...], *, backend: Any = None, token: str | None = "alice",
                   **config: Any) -> Iterator[Running]:
    """A server with a token named ``token`` (None: no tokens), index and model roots in ``tmp``."""
    from backend.local import LocalBackend
    from backend.server import ServerConfig, create_app
    from backend.server.auth import TokenStore

    state_dir = tmp / "state"
    secret = TokenStore(state_dir / "tokens.json").add(token) if token else ""
    for name in ("indexes", "models"):
        (tmp / name).mkdir(exist_ok=True)
    cfg = ServerConfig(slide_roots=slide_roots, index_roots=(tmp / "indexes",), model_roots=(tmp / "models",),
                       state_dir=state_dir, **config)
    if backend is None:
        backend = LocalBackend(cache_dir=tmp / "cache", device="cpu")
    app = create_app(cfg, backend=backend)
    with serve(app) as url:
        yield Running(url, secret, app, state_dir)


def slide_id(running: Running, name: str) -> str:
    """The id the server lists slide ``name`` under."""
    import httpx

    listing = httpx.get(f"{running.url}/v1/slides", headers=running.headers()).json()
    return next(s["id"] for s in listing if s["name"] == name)
