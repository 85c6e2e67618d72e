"""A real server on 127.0.0.1 for the server and client tests (uvicorn in a thread; no HTTP mocks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend import api

TILES = api.TileOptions(tile_size=64, mpp=2.0)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


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


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Iterator[Running]:
    """One server over the shared test slides, for the tests of a module."""
    tmp = tmp_path_factory.mktemp("server")
    with running_server(tmp, (slides_dir,)) as running:
        yield running


def slide_id(running: Running, name: str) -> str:
    import httpx

    listing = httpx.get(f"{running.url}/v1/slides", headers=running.headers()).json()
    return next(s["id"] for s in listing if s["name"] == name)
