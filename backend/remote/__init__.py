"""The remote form of the :class:`backend.api.Backend`: a client of ``histoclip serve``.

This package imports only :mod:`backend.api`, :mod:`backend.errors`, numpy and httpx, so a
laptop that only talks to a GPU server loads no model code (a test asserts no torch).
"""

from __future__ import annotations

from backend.remote.client import TOKEN_ENV, HttpBackend
from backend.remote.wire import (
    ApiVersionError,
    AuthError,
    CallTimeoutError,
    JobInterruptedError,
    LimitError,
    RemoteError,
    ServerUnreachableError,
)

__all__ = [
    "ApiVersionError", "AuthError", "CallTimeoutError", "HttpBackend", "JobInterruptedError", "LimitError", "RemoteError",
    "ServerUnreachableError", "TOKEN_ENV",
]
