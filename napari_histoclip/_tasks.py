"""Running long backend calls off the UI thread, with one progress bar and a cancel button.

A task is a plain function ``fn(progress, cancel) -> result`` (the widget closes over its
request and the ``Backend``); :class:`TaskRunner` runs it in a napari worker, relays the
backend's :class:`~backend.api.Progress` callbacks to the UI thread through a Qt signal, and
calls ``on_done`` (or shows the error as a notification) back on the UI thread. Small jobs a
user does not wait for (a slide's fingerprint) run beside it with :meth:`TaskRunner.run_quiet`,
and imports ahead of need with :func:`start_daemon`: every thread the plugin starts starts here.

``HISTOCLIP_SYNC=1`` runs tasks synchronously on the calling thread, so a debugger or a
traceback sees the whole stack (stardist-napari's trick).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)

SYNC_ENV = "HISTOCLIP_SYNC"
#: A cancelled task that has not stopped after this long (a model load or an import cannot be
#: interrupted: 11 s were seen) is let go: the dock is free at once, and the task's late result
#: or error is dropped when it ends.
CANCEL_GRACE_MS = 300
#: At quit, how long to wait for cancelled tasks that were let go to end (a worker thread still
#: running when the interpreter shuts down makes Qt abort the process).
LET_GO_QUIT_WAIT_MS = 30_000
#: The pause between steps of a result shown in steps (:meth:`TaskRunner._show_in_steps`).
STEP_PAUSE_MS = 15
T = TypeVar("T")
TaskFn = Callable[[Callable[[Any], None], threading.Event], T]


def sync_mode() -> bool:
    """Whether ``HISTOCLIP_SYNC`` asks for tasks on the calling thread."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class TaskState:
    """What the footer shows: the running task's label and progress (total 0: unknown)."""

    label: str
    done: int = 0
    total: int = 0
    stage: str = ""
    cancelling: bool = False

    @property
    def text(self) -> str:
        what = f"{self.label}: {self.stage}" if self.stage else self.label
        what = f"{what} {self.done}/{self.total}" if self.total else what
        # The backend stops at its next check (after a model load returns, at the next batch):
        # until then the footer says the click was taken.
        return f"cancelling… ({what})" if self.cancelling else what


class _Relay(QObject):
    """Lives on the UI thread; signals emitted from the worker arrive there queued."""

    progress = Signal(object)


class TaskRunner:
    """Runs one task at a time and reports to ``on_state`` (a footer) on the UI thread.

    Parameters
    ----------
    on_state
        Called with a :class:`TaskState` when a task starts or progresses, and with None
        when it ends.
    """

    def __init__(self, on_state: Callable[[TaskState | None], None]) -> None:
        self._on_state = on_state
        self._relay = _Relay()
        # Progress is coalesced: a worker may report thousands of tiles a second, and a queued
        # signal per report would keep the UI thread repainting the footer back to back.
        self._relay.progress.connect(self._take_progress)
        self._pending_lock = threading.Lock()
        self._pending: Any = None
        self._cancel: threading.Event | None = None
        self._state: TaskState | None = None
        self._closed = False
        self._after_close: Callable[[], None] | None = None
        self._let_go: set[int] = set()  # ids of cancelled tasks still running in the background
        self._task_id = 0
        self._quit_hooked = False  # aboutToQuit waits for tasks let go (see _wait_at_quit)
        self._detach: Callable[[], None] | None = None  # lets the running task go (see cancel)
        self.worker: Any = None
        self._quiet: set[Any] = set()  # quiet workers, referenced until they finish (else collected)
        #: Wall time of the last finished task, seconds (shown in tests and the status line).
        self.last_duration: float = 0.0

    @property
    def busy(self) -> bool:
        return self._state is not None

    @property
    def background(self) -> int:
        """Cancelled tasks let go that are still running (their results will be dropped)."""
        return len(self._let_go)

    def cancel(self) -> None:
        """Ask the running task to stop; the backend raises CancelledError at its next check.

        A task that has not stopped within ``CANCEL_GRACE_MS`` (busy in a model load) is let
        go: the dock says it was cancelled and is free for the next task; the task ends in the
        background and its result is dropped. A closing dock waits for the real end instead
        (it must not release the backend under a running task).
        """
        if self._cancel is not None:
            self._cancel.set()
            if self._state is not None and not self._closed:
                self._set_state(replace(self._state, cancelling=True))
                detach = self._detach
                if detach is not None:
                    from qtpy.QtCore import QTimer

                    QTimer.singleShot(CANCEL_GRACE_MS, detach)

    def close(self, then: Callable[[], None] | None = None) -> None:
        """The dock is closing: cancel the running task and drop its result and progress (its
        layers must not appear after the dock is gone); ``then`` runs once no task is running
        (now, or when the cancelled task has stopped). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        if self.busy or self._let_go:
            self._after_close = then
        elif then is not None:
            then()

    def run(
        self,
        label: str,
        fn: TaskFn[T],
        on_done: Callable[[T], Iterator[Any] | None],
        on_error: Callable[[Exception], None] | None = None,
    ) -> bool:
        """Start ``fn`` unless a task is running (then notify and return False).

        An ``on_done`` that is a generator is shown in steps (:meth:`_show_in_steps`).
        """
        from napari.utils.notifications import show_warning

        if self._closed:
            return False  # a closed dock starts nothing
        if self.busy:
            assert self._state is not None
            show_warning(f"{label}: wait for '{self._state.label}' to finish, or cancel it")
            return False
        from napari_histoclip._compat import keep_triton_out

        keep_triton_out()  # before any backend code can import torch in this process
        cancel = threading.Event()
        self._cancel = cancel
        self._set_state(TaskState(label))
        t0 = time.perf_counter()
        self._task_id += 1
        task = self._task_id

        def finish() -> bool:
            """End the task; False when it was let go or the dock closed (then nothing is shown)."""
            if task in self._let_go:  # cancelled and let go: it has now really ended
                self._let_go.discard(task)
                if self._state is None and not self._closed:
                    self._on_state(None)  # the footer no longer says it runs in the background
                self._run_after_close()
                return False
            self.last_duration = time.perf_counter() - t0
            self._cancel = None
            self._detach = None
            self.worker = None
            if self._closed:
                self._state = None
                self._run_after_close()
                return False
            self._set_state(None)
            return True

        def detach() -> None:
            """Let the cancelled task go if it is still the running one (see :meth:`cancel`)."""
            if self._closed or self._task_id != task or self._state is None or not cancel.is_set():
                return
            from napari.utils.notifications import show_info

            self._let_go.add(task)
            self._wait_at_quit()
            self.last_duration = time.perf_counter() - t0
            self._cancel = self._detach = None
            self.worker = None
            self._set_state(None)
            show_info(f"{label}: cancelled")

        self._detach = detach

        def done(result: T) -> None:
            if finish():
                shown = on_done(result)
                if isinstance(shown, Iterator):
                    self._show_in_steps(label, shown, on_error or show_task_error)

        def failed(error: Exception) -> None:
            if finish():
                (on_error or show_task_error)(_labelled(label, error))

        def emit(p: Any) -> None:
            if task in self._let_go:  # let go: its progress is not the running task's
                return
            with self._pending_lock:
                queued = self._pending is not None
                self._pending = p
            if not queued:  # the UI thread takes the latest report when it gets to it
                self._relay.progress.emit(None)

        if sync_mode():
            try:
                result = fn(self._on_progress, cancel)
            except Exception as e:  # noqa: BLE001 - shown to the user, as in a worker
                failed(e)
            else:
                done(result)
            return True

        from napari.qt.threading import create_worker

        # The result and the error are taken from the worker's signals, delivered on the UI
        # thread; progress goes through the relay because FunctionWorker has no yielded signal.
        # Connected at creation: a worker without an "errored" handler re-raises in the Qt loop.
        worker = create_worker(fn, emit, cancel, _start_thread=False, _connect={"returned": done, "errored": failed})
        self.worker = worker
        worker.start()
        return True

    def run_quiet(
        self,
        fn: Callable[[], T],
        on_done: Callable[[T], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        """Run a small job ``fn()`` a user does not wait for, beside any task: no progress, no
        cancel, nothing in the footer. ``on_done(result)`` or ``on_error(error)`` runs on the UI
        thread (on the calling thread in ``HISTOCLIP_SYNC`` mode)."""
        if sync_mode():
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - handed to on_error, as in a worker
                on_error(e)
            else:
                on_done(result)
            return
        from napari.qt.threading import create_worker

        worker = create_worker(fn, _start_thread=False, _connect={"returned": on_done, "errored": on_error})
        self._quiet.add(worker)
        worker.finished.connect(lambda: self._quiet.discard(worker))
        worker.start()

    @property
    def quiet_busy(self) -> bool:
        """Whether a quiet job is running (tests wait on it)."""
        return bool(self._quiet)

    # --- internals ------------------------------------------------------------------------

    def _show_in_steps(self, label: str, steps: Iterator[Any], on_error: Callable[[Exception], None]) -> None:
        """Run an ``on_done`` that is a generator one step per event-loop turn, busy meanwhile.

        napari builds a new layer's visual and controls on the UI thread (0.3-0.5 s each
        here): a result of five layers added in one go freezes the UI 1.3 s and more. Each
        ``yield`` of ``on_done`` lets the UI repaint and take input before the next layer.
        """
        from qtpy.QtCore import QTimer

        self._set_state(TaskState(label, stage="showing the result"))

        def step() -> None:
            if self._closed:
                self._state = None
                self._run_after_close()
                return
            try:
                next(steps)
            except StopIteration:
                self._set_state(None)
                return
            except Exception as e:  # noqa: BLE001 - shown as the task's error, as a worker's
                self._set_state(None)
                on_error(_labelled(label, e))
                return
            # a pause, not 0 ms: Qt runs an overdue zero-timer before other timers, and the
            # canvas and a user's input must get their turn between steps
            QTimer.singleShot(STEP_PAUSE_MS, step)

        if sync_mode():
            for _ in steps:
                pass
            self._set_state(None)
        else:  # the footer's "showing the result" is painted in a turn before the first step
            QTimer.singleShot(STEP_PAUSE_MS, step)

    def _wait_at_quit(self) -> None:
        """Once: when the application quits, wait (bounded) for the tasks let go to end."""
        if self._quit_hooked:
            return
        from qtpy.QtCore import QCoreApplication, QThreadPool

        app = QCoreApplication.instance()
        if app is None:
            return
        self._quit_hooked = True

        def wait() -> None:
            pool = QThreadPool.globalInstance()
            if self._let_go and pool is not None:
                pool.waitForDone(LET_GO_QUIT_WAIT_MS)

        app.aboutToQuit.connect(wait)

    def _run_after_close(self) -> None:
        """Once the dock closed and no task runs (in front or let go), run the close's ``then``."""
        if self._closed and self._state is None and not self._let_go:
            then, self._after_close = self._after_close, None
            if then is not None:
                then()

    def _take_progress(self, _: Any = None) -> None:
        with self._pending_lock:
            p, self._pending = self._pending, None
        if p is not None:
            self._on_progress(p)

    def _on_progress(self, p: Any) -> None:
        if self._state is None or self._closed:
            return
        self._set_state(
            replace(
                self._state,
                done=int(getattr(p, "done", 0)),
                total=int(getattr(p, "total", 0)),
                stage=str(getattr(p, "stage", "")),
            )
        )

    def _set_state(self, state: TaskState | None) -> None:
        self._state = state
        self._on_state(state)


def start_daemon(fn: Callable[[], None], name: str) -> threading.Thread:
    """Run ``fn()`` in a daemon thread, unconnected to Qt (imports ahead of need): a daemon
    does not hold up the interpreter's exit, where a Qt worker still running aborts it."""
    thread = threading.Thread(target=fn, name=name, daemon=True)
    thread.start()
    return thread


class _LabelledError(Exception):
    def __init__(self, label: str, error: Exception) -> None:
        super().__init__(f"{label}: {error}")
        self.label = label
        self.error = error


def _labelled(label: str, error: Exception) -> Exception:
    return _LabelledError(label, error)


def one_line(text: str) -> str:
    """``text`` with its line breaks as spaces: a toast would show only the first line."""
    return re.sub(r"\s*\n\s*", " ", text).strip()


def error_line(error: BaseException, *, planned: bool = False) -> str:
    """An error as one line a user reads first: our errors (``HistoclipError``, or any when
    ``planned``) as their message, others with their type ("'x'" says nothing without
    "KeyError")."""
    from backend.errors import HistoclipError

    text = one_line(str(error))
    if (planned or isinstance(error, HistoclipError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


#: Most characters of an error's headline (its first sentence); a longer one is cut
#: at a word. The backend puts the cause and the remedy within its first 80 characters.
HEADLINE_CHARS = 160
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")


def split_message(text: str, limit: int = HEADLINE_CHARS) -> tuple[str, str]:
    """An error's headline (its first sentence, at most ``limit`` characters) and the rest,
    each on one line (a line break inside a message continues its sentence).

    Examples
    --------
    >>> split_message("No weights for quiltnet-b32 offline: pick test-tiny. The cache is /x/hub.")
    ('No weights for quiltnet-b32 offline: pick test-tiny.', 'The cache is /x/hub.')
    """
    parts = _SENTENCE_END.split(one_line(text), maxsplit=1)
    first, rest = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")
    if len(first) > limit:
        cut = first.rfind(" ", 0, limit)
        cut = cut if cut > limit // 2 else limit
        first, rest = first[:cut].rstrip() + " …", ("… " + first[cut:].lstrip() + " " + rest).strip()
    return first, rest


def _cause(error: BaseException) -> str:
    """The text of an error a user reads: a slide error's own cause (its message repeats the
    slide's name, which the task label says), else :func:`error_line` without joining lines."""
    from backend.errors import HistoclipError, SlideError

    if isinstance(error, SlideError) and error.cause:
        return str(error.cause)
    text = str(error).strip()
    if isinstance(error, HistoclipError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def task_error_message(label: str, error: BaseException) -> str:
    """The one line a failed task shows: the cause's headline first, then which task.

    napari's toast shows a fixed-width first line of a message and elides the rest, so
    "Zero-shot on CMU-1-Small-Region.svs: ..." would hide why, and so would a long message
    whose first words are not the cause. The headline is the error's first sentence
    (:func:`split_message`); the dock shows the whole text on demand (``_error_panel``).
    """
    headline, _ = split_message(_cause(error))
    return f"{headline} ({label})"


def show_task_error(error: Exception, details: Callable[[str, str], None] | None = None) -> None:
    """A failed task as one notification line; cancellation is information, not an error.

    ``details(headline, full_text)``, when given, also gets a real error (the dock's error
    panel shows its whole text on demand).
    """
    from napari.utils.notifications import show_error, show_info

    inner = error.error if isinstance(error, _LabelledError) else error
    label = error.label if isinstance(error, _LabelledError) else "task"
    from backend.errors import CancelledError, HistoclipError

    if isinstance(inner, CancelledError):
        show_info(f"{label}: cancelled")
        return
    if not isinstance(inner, HistoclipError):
        # Not a planned error: keep the traceback in the log for a bug report.
        log.error("%s failed", label, exc_info=inner)
    line = task_error_message(label, inner)
    show_error(line)
    if details is not None:
        details(line, f"{label} failed:\n{_cause(inner)}")
