"""What the dock's panels share: the typed context they are given, and the Qt-free core that
owns the dock's backend.

A panel (a tab, the backend picker, the µm/px memory) is given a :class:`DockContext`, the
dock's public face, and uses only what it declares: the viewer, the ``Backend``, the chosen
model and slide, the task runner, and the few services one tab offers another (the Zero-shot
tab's prompts and class-map layers, the Refine tab's marks). A panel never reads another
panel's attributes or the dock's privates (``tests/napari_histoclip/test_context.py`` scans for
it). :class:`BackendSlot` is the state behind the dock's backend (made on first use by a
factory, or injected; which one the dock must close), kept free of Qt so a unit test drives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from backend.api import Backend, SlideRef
    from backend.needs import Task
    from napari_histoclip._marks import Cell
    from napari_histoclip._slide import SlideInfo
    from napari_histoclip._tasks import TaskRunner

log = logging.getLogger(__name__)

#: Makes a backend for a device name ("auto" or None: the backend's choice).
BackendFactory = Callable[[str | None], "Backend"]


class BackendSlot:
    """The dock's backend and who owns it.

    A backend made here by ``factory`` (on first :meth:`get`) is owned: it is closed when it is
    released (the dock closes, the device or the factory changes). An injected backend (a test's
    double, a caller's remote backend) belongs to the caller: it is never closed here and a
    device change keeps it.

    Parameters
    ----------
    factory
        Makes a backend for a device name.
    backend
        A backend to use instead of making one (not owned).
    on_close_error
        Called with the exception when closing an owned backend fails (the dock runs from Qt
        slots, where an exception would abort napari: it is reported, not raised).
    """

    def __init__(
        self,
        factory: BackendFactory,
        backend: Backend | None = None,
        on_close_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._factory = factory
        self._backend = backend
        self._injected = backend is not None
        self._on_close_error = on_close_error

    @property
    def current(self) -> Backend | None:
        """The backend in use, None before the first :meth:`get` (or after a release)."""
        return self._backend

    @property
    def owned(self) -> bool:
        """Whether the backends are made here by the factory (then closed here), not injected."""
        return not self._injected

    def get(self, device: str | None) -> Backend:
        """The backend in use, made by the factory for ``device`` when there is none."""
        if self._backend is None:
            self._backend = self._factory(device)
            self._injected = False
        return self._backend

    def inject(self, backend: Backend) -> None:
        """Use ``backend`` (the caller's: never closed here); an owned one in use is closed."""
        self.release()
        self._backend, self._injected = backend, True

    def use_factory(self, factory: BackendFactory) -> None:
        """Make backends with ``factory`` from now on (on the next :meth:`get`); the one in use
        is closed if it was made here, forgotten otherwise."""
        self.release()
        self._backend, self._injected, self._factory = None, False, factory

    def device_changed(self) -> None:
        """A new device: an owned backend (loaded on the old device) is closed, to be made again
        on next use; an injected one picks its own device and is kept."""
        if not self._injected:
            self.release()

    def release(self) -> None:
        """Forget the backend in use; close it when it was made here. Idempotent."""
        backend, injected = self._backend, self._injected
        self._backend = None
        if backend is None or injected:
            return
        close = getattr(backend, "close", None)  # a test double may have none
        if close is None:
            return
        try:
            close()
        except Exception as e:  # noqa: BLE001 - reported by the owner (see on_close_error)
            if self._on_close_error is None:
                raise
            self._on_close_error(e)


@dataclass(frozen=True)
class PromptSet:
    """The Zero-shot tab's class prompts as typed (not yet checked), for the tabs that start
    from them (Refine, Save as classifier)."""

    labels: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    colors: tuple[str, ...]
    unknown_threshold: float | None


@runtime_checkable
class DockContext(Protocol):
    """The dock as its panels see it (``HistoclipWidget`` implements it)."""

    #: The napari viewer (in a plugin, napari's public-only proxy of it).
    viewer: Any
    #: Runs background work: one task at a time with progress, or quiet background jobs.
    runner: TaskRunner

    @property
    def backend(self) -> Backend:
        """The backend (made on first use); a ``UserError`` when none can be made."""
        ...

    @property
    def model_name(self) -> str:
        """The chosen model's name; a ``UserError`` when none is chosen."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the dock has closed (late results are then dropped)."""
        ...

    def model_can(self, task: Task) -> bool:
        """Whether the chosen model can do ``task`` (unknown: taken to be able)."""
        ...

    def slide_layer(self) -> Any | None:
        """The chosen slide's image layer, None when no slide is open."""
        ...

    def select_slide(self, layer: Any) -> None:
        """Make ``layer`` (a slide's image layer) the chosen slide."""
        ...

    def require_slide(self) -> tuple[Any, SlideInfo]:
        """The chosen slide layer and its slide, or a ``UserError`` saying to open one."""
        ...

    def slide_ref(self, info: SlideInfo) -> SlideRef:
        """The slide for a request (with the user's µm/px); a ``UserError`` when it has none."""
        ...

    def run(self, label: str, fn: Callable[..., Any], on_done: Callable[[Any], Any]) -> bool:
        """Run ``fn(progress, cancel)`` in the dock's task runner; ``on_done(result)`` on the UI
        thread. False when not started (another task is running)."""
        ...

    def warn_random(self, result: Any, model: str) -> None:
        """Say once per model that a result came from random weights."""
        ...

    def show_mpp(self) -> None:
        """Show the chosen slide's µm/px in the header."""
        ...

    def refresh_models(self) -> None:
        """List the backend's models in the model picker."""
        ...

    def use_backend_factory(self, factory: BackendFactory, device_note: str | None = None) -> None:
        """Use backends from ``factory`` from now on (the one in use is closed if the dock made
        it); ``device_note``: the device is the factory's (a server's), said in the device box,
        which is then locked."""
        ...

    def show_class_map(self, result: Any, info: SlideInfo, colors: list[str], region: bool = False) -> list[Any]:
        """Show a class-map result (zero-shot, classifier or refined) as the Zero-shot tab does,
        replacing the slide's previous one; returns its layers (the class map first)."""
        ...

    def show_class_map_steps(self, result: Any, info: SlideInfo, colors: list[str], region: bool = False,
                             made: Sequence[Any] | None = None) -> Generator[None, None, list[Any]]:
        """:meth:`show_class_map` in turns of the event loop (a generator a task's ``on_done``
        returns; it returns the layers): ``made``, the layers' models built in the worker."""
        ...

    def prompt_set(self) -> PromptSet:
        """The Zero-shot tab's prompts as typed."""
        ...

    def painted_marks(self, slide_path: str) -> dict[Cell, str]:
        """The Refine tab's painted marks on a slide (tile -> class), empty when none."""
        ...

    def import_marks(self, info: SlideInfo, annotations: Any) -> int:
        """Give the Refine tab marks read from GeoJSON; returns the number of tiles marked."""
        ...
