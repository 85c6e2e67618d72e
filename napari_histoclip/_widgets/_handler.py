"""What a dock button does with an error: a form the user must fix (``UserError``) and the
backend's planned errors become one notification, never an exception raised into napari."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from napari_histoclip._tasks import error_line

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A form the user must fix (no slide open, no prompts): shown, never raised to napari."""


def handler(fn: F) -> F:
    """Wrap a button handler: user and backend errors become one notification."""

    @wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from napari.utils.notifications import show_error

        from backend.errors import HistoclipError

        try:
            return fn(*args, **kwargs)
        except (UserError, HistoclipError) as e:
            show_error(error_line(e, planned=True))
            return None

    return wrapped  # type: ignore[return-value]
