"""Warn before a slow run: a large encoder on a CPU (a ViT-H slide takes hours there).

Every dock task runs ``fn(progress, cancel)`` in a worker (:class:`napari_histoclip._tasks.TaskRunner`).
:class:`SlowRunWatch` wraps it: when the embedding engine announces the tiles it is about to
encode (the first ``encoding`` progress event, after the cache has been consulted, so a cached
slide never warns), it asks :func:`backend.models.runtime.slow_warning` for an estimate from
the tile count and the model's speed on this CPU (the card's GFLOPs x this CPU's measured matmul
speed), and shows it before the first tile is encoded; the run goes on and Cancel stops it.

Only an in-process backend on a CPU is estimated (a server picks its own device). The CPU's
speed is measured once per dock, in the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal


class _Relay(QObject):
    """Lives on the UI thread: a warning emitted from the worker is shown there."""

    warning = Signal(str)


class SlowRunWatch:
    """Wraps a dock task so that the start of a slow embedding on CPU is announced.

    Parameters
    ----------
    threshold_s
        Runs estimated to take longer than this warn (default: the backend's ``SLOW_SECONDS``).
    """

    def __init__(self, threshold_s: float | None = None) -> None:
        self.threshold_s = threshold_s
        self._cpu_gflops: float | None = None
        self._relay = _Relay()
        self._relay.warning.connect(_show_warning)

    def wrap(self, fn: Callable[..., Any], backend: Any, model: str) -> Callable[..., Any]:
        """``fn`` whose progress events are watched for the start of an embedding with ``model``."""

        def watched(progress: Callable[[Any], None], cancel: Any) -> Any:
            seen: list[bool] = []

            def watch(p: Any) -> None:
                if not seen and str(p.stage).startswith("encoding") and p.total > p.done:
                    seen.append(True)
                    text = self.estimate(backend, model, int(p.total - p.done))
                    if text:
                        self._relay.warning.emit(text)
                progress(p)

            return fn(watch, cancel)

        return watched

    def estimate(self, backend: Any, model: str, n_tiles: int) -> str | None:
        """The warning for encoding ``n_tiles`` with ``model`` on ``backend``, or None (fast
        enough, not on a CPU, speed unknown, or not an in-process backend)."""
        from backend.errors import HistoclipError
        from backend.local import LocalBackend

        if not isinstance(backend, LocalBackend):
            return None  # a remote backend: the server's device decides
        try:
            loaded = backend.model(model)  # loaded already: the engine is about to use it
        except HistoclipError:
            return None
        if str(getattr(loaded.device, "type", loaded.device)) != "cpu":
            return None
        from backend.models.runtime import SLOW_SECONDS, measure_cpu_gflops, slow_warning

        if self._cpu_gflops is None:
            self._cpu_gflops = measure_cpu_gflops()
        threshold = SLOW_SECONDS if self.threshold_s is None else self.threshold_s
        return slow_warning(loaded.entry, n_tiles, cpu_gflops=self._cpu_gflops, threshold_s=threshold)


def _show_warning(text: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(text)
