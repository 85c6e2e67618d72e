"""``histoclip serve``: the backend over HTTP (FastAPI on uvicorn, the ``server`` extra).

See :mod:`backend.server.app` for the routes (its routers are in :mod:`backend.server.routes`),
:mod:`backend.remote` for the client.
"""

from __future__ import annotations

from backend.server.config import Limits, ServerConfig, check_bind, is_loopback

__all__ = ["Limits", "ServerConfig", "check_bind", "create_app", "is_loopback"]


def __getattr__(name: str):  # FastAPI is imported only when an app is made
    if name == "create_app":
        from backend.server.app import create_app

        return create_app
    raise AttributeError(name)
