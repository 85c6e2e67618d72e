"""Keep slide libraries' log lines off the user's console while we handle their errors.

tifffile logs "invalid offset to first page" and wsidicom logs whole tracebacks (on the root
logger) for files we go on to refuse with our own message; those lines would reach a user's
terminal or napari's console beside the clear error. Inside :func:`library_logs_captured`
the records that the calling thread makes on those loggers are kept, not emitted: the caller
may quote them as the cause. Records of other threads pass untouched, so a quiet open in a
worker never hides another thread's messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Loggers the slide readers write to (wsidicom logs on the root logger).
LIBRARY_LOGGERS: tuple[str, ...] = ("", "tifffile", "wsidicom", "pydicom", "opentile")


class _PerThreadCapture(logging.Filter):
    """Drops (and keeps the text of) the records of threads inside a capture block."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._held: dict[int, list[list[str]]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        stack = self._held.get(record.thread or 0)
        if not stack:
            return True
        try:
            stack[-1].append(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed record is still kept off the console
            stack[-1].append(str(record.msg))
        return False

    def push(self, ident: int) -> list[str]:
        out: list[str] = []
        with self._lock:
            self._held.setdefault(ident, []).append(out)
        return out

    def pop(self, ident: int) -> None:
        with self._lock:
            stack = self._held.get(ident)
            if stack:
                stack.pop()
            if not stack:
                self._held.pop(ident, None)


_CAPTURE = _PerThreadCapture()
_INSTALL_LOCK = threading.Lock()


def _install() -> None:
    with _INSTALL_LOCK:
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if _CAPTURE not in logger.filters:
                logger.addFilter(_CAPTURE)


@contextmanager
def library_logs_captured() -> Iterator[list[str]]:
    """Hold back this thread's slide-library log records; yields the list of their messages.

    Examples
    --------
    >>> with library_logs_captured() as messages:     # doctest: +SKIP
    ...     tifffile.TiffFile(path)
    >>> messages                                       # doctest: +SKIP
    ['<tifffile.TiffPages @1275950> invalid offset to first page 1275950']
    """
    _install()
    ident = threading.get_ident()
    messages = _CAPTURE.push(ident)
    try:
        yield messages
    finally:
        _CAPTURE.pop(ident)
