"""The guard in front of every route: token, body size, audit line, request counts.

A plain ASGI middleware (not a FastAPI dependency) so that it also covers the OpenAPI
schema, the docs and unknown paths: without a valid token nothing but ``/v1/health``
answers, not even a 404 that would confirm a route exists.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from typing import Any

from backend.server.auth import bearer

audit_log = logging.getLogger("histoclip.audit")
OPEN_PATHS = frozenset({"/v1/health"})
_ID = re.compile(r"(?<=/)[0-9a-f]{16,32}(?=/|$)")


class BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware; ``state`` is the :class:`backend.server.state.ServerState`."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state
        self.counts: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        state.guard = self

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        audit: dict[str, Any] = {"call": f"{scope.get('method', '')} {path[:80]}", "slide": "", "token": "-"}
        status = [0]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if path not in OPEN_PATHS:
                found = self.state.identify(bearer(headers.get("authorization")))
                if found is None:
                    await _reply(send_status, 401, "AuthError", "missing or unknown bearer token "
                                 "(send 'Authorization: Bearer TOKEN'; tokens come from 'histoclip serve --add-token NAME')",
                                 {"www-authenticate": 'Bearer realm="histoclip"'})
                    return
                name, owner = found
                audit["token"] = name
                scope.setdefault("state", {}).update(token=name, owner=owner)  # jobs belong to the id
            scope.setdefault("state", {})["audit"] = audit
            limit = self.state.config.limits.max_body_bytes
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await _reply(send_status, 413, "LimitError",
                             f"request body of {declared} bytes; this server takes at most {limit}")
                return
            await self.app(scope, _limited(receive, limit), send_status)
        except BodyTooLarge:
            if status[0] == 0:
                await _reply(send_status, 413, "LimitError", f"request body over {self.state.config.limits.max_body_bytes} bytes")
        finally:
            ms = (time.perf_counter() - t0) * 1000
            with self._lock:  # ids folded, so metrics have few label values
                self.counts[(_ID.sub("{id}", _call_field(audit["call"])), status[0])] += 1
            if path not in OPEN_PATHS:  # health is polled; auditing it would drown the log
                # Every field escaped: a decoded %0A in the path or a newline in a slide name in the
                # body must not start a forged line, nor a space a forged field.
                audit_log.info("token=%s call=%s slide=%s status=%d duration_ms=%.1f", audit_field(audit["token"]),
                               _call_field(audit["call"]), audit_field(audit["slide"]), status[0], ms)


def audit_field(value: object) -> str:
    """``value`` as one audit field: control characters, Unicode line and paragraph
    separators, other non-printable characters and whitespace written as ``\\xNN`` /
    ``\\uNNNN`` escapes, a backslash doubled; "-" when empty."""
    out = []
    for ch in str(value):
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() and not ch.isspace():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out) or "-"


def _call_field(call: str) -> str:
    """A route name, or ``METHOD path`` with its one space kept and the path escaped."""
    method, space, path = call.partition(" ")
    return audit_field(method) + (space + audit_field(path) if space else "")


def _limited(receive: Any, limit: int) -> Any:
    seen = [0]

    async def wrapped() -> dict[str, Any]:
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise BodyTooLarge()
        return message

    return wrapped


async def _reply(send: Any, status: int, kind: str, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
