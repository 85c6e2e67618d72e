"""Bearer tokens, stored hashed.

The token file is JSON ``{"tokens": [{"name": ..., "sha256": ..., "created": ...}]}``. A token
is 32 random bytes (``secrets.token_urlsafe``), so a plain SHA-256 of it cannot be brute-forced
and needs no slow password hash; only the hash is written, and the token is printed once.
Checking compares the hash of the presented token with every stored hash using
``hmac.compare_digest``, so the time taken tells nothing about how close a guess was.

A name is a label for people (audit lines): a token revoked and issued again under the same
name is another token. What a token owns (its jobs) is owned by its *id*, derived from its hash,
so it is never reused: a new token has a new secret, hence a new id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from backend.atomic import atomic_write_text
from backend.errors import InputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The token file of a server: read once at start (restart to revoke or add)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: list[tuple[str, str]] = []
        self._created: list[str | None] = []  # as the file says, kept when a token is added
        self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            tokens = data["tokens"]
            self._entries = [(str(t["name"]), str(t["sha256"])) for t in tokens]
            self._created = [t.get("created") for t in tokens]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{self.path}: not a histoclip token file ({e})") from e

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._entries]

    def add(self, name: str) -> str:
        """Make a token named ``name``, store its hash, and return the token (shown once)."""
        if not _NAME.fullmatch(name):
            raise InputError(f"--add-token {name!r}: a name is 1-64 letters, digits, '.', '_', '@' or '-'")
        if name in self.names:
            raise InputError(f"--add-token {name!r}: a token of that name exists in {self.path}; pick another name")
        token = secrets.token_urlsafe(32)
        self._entries.append((name, _digest(token)))
        self._created.append(datetime.now(UTC).isoformat(timespec="seconds"))
        data = {"tokens": [{"name": n, "sha256": h, "created": c} for (n, h), c in zip(self._entries, self._created)]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(data, indent=1), mode=0o600)
        return token

    def check(self, token: str | None) -> str | None:
        """The name of ``token``, or None when it is not one of ours."""
        found = self.identify(token)
        return None if found is None else found[0]

    def identify(self, token: str | None) -> tuple[str, str] | None:
        """(name, id) of ``token``, or None when it is not one of ours; see :func:`token_id`."""
        if not token:
            return None
        digest = _digest(token)
        found = None
        for name, stored in self._entries:  # no early exit: every check costs the same
            if hmac.compare_digest(digest, stored):
                found = (name, token_id(stored))
        return found


def token_id(stored_hash: str) -> str:
    """The never-reused id of the token whose SHA-256 is ``stored_hash`` (jobs are owned by it)."""
    return "t" + hashlib.sha256(f"histoclip-token-id\0{stored_hash}".encode()).hexdigest()[:24]


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
