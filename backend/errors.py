"""Exceptions raised by the backend.

Every error names the file, field or value at fault and the cause, so that the CLI and the
plugin can show ``str(error)`` to a user as one clear line. Causes from libraries are chained
(``raise ... from e``) for debugging, never printed.
"""

from __future__ import annotations

from pathlib import Path


class HistoclipError(Exception):
    """Base class of every error the backend raises on purpose."""


# --- slides -----------------------------------------------------------------------------


class SlideError(HistoclipError):
    """A slide file could not be used. ``path`` is the file; ``cause`` says why."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{self.path.name}: {cause}")


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class UnsupportedSlideError(SlideError):
    """No reader recognises the file (not an image, unknown format or compression)."""


class SlideReadError(SlideError):
    """The slide opened, but reading pixels from it failed (corrupt tile, bad codec)."""


class MissingMppError(SlideError):
    """The slide's metadata has no microns-per-pixel and the caller gave none."""


# --- models -----------------------------------------------------------------------------


class ModelError(HistoclipError):
    """A model could not be resolved or loaded."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is neither registered, an ``hf-hub:`` id nor a bundle path."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(ModelError):
    """A model's weights are not on disk and cannot be downloaded (offline or no network)."""


class CapabilityError(ModelError, ValueError):
    """A task needs what the model cannot do (e.g. text for an image-only encoder)."""


class ModelMismatchError(ModelError):
    """Embeddings or a component were made with another model than the one given."""


# --- everything else --------------------------------------------------------------------


class CancelledError(HistoclipError):
    """A long job stopped because its cancel signal was set."""


class InputError(HistoclipError, ValueError):
    """A user-supplied value (CLI flag, config field, file content) is invalid."""


class LimitExceededError(InputError):
    """A request asks for more work than a limit allows (tiles per slide, classes, prompts):
    refused before anything is allocated; the message names the limit (HTTP 413)."""
