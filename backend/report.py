"""What the command lines (``histoclip``, ``python -m training``) show a user on stderr.

One-line errors instead of tracebacks for errors raised on purpose, and one clean progress bar
per unit of work (a slide, a cohort, an image set): no empty ``0tile [00:00, ?tile/s]`` bar
before the work starts, no rate for a slide served from the cache, and none of the bars
libraries draw on their own (transformers' "Loading weights", "Writing model shards").
Both command lines import this module; it imports nothing heavy at import time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.errors import HistoclipError

if TYPE_CHECKING:
    from backend.models.encoder import Encoder

#: First words of ``Progress.stage`` that carry no count of work being done: the bar waits
#: for the first event that does (a slide served whole from the cache gets no bar at all).
_NOT_COUNTING = ("loading", "cached", "waiting")


def run_reporting_errors(prog: str, run: Callable[[], int | None]) -> int:
    """Call ``run`` and return its exit code; a :class:`HistoclipError` becomes one line on
    stderr (``<prog>: error: <message>``, exit 1) and Ctrl-C exit 130. Other exceptions are
    bugs and keep their traceback. The one error reporter of both command lines."""
    try:
        return int(run() or 0)
    except HistoclipError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def random_weights_note(name: str, model: Encoder, consequence: str) -> str | None:
    """The NOTE a command prints about a model with random weights, or None when it has none.

    Parameters
    ----------
    name
        The model as the user named it.
    model
        The loaded model (``random_weights``; ``trained_from``, set for bundles).
    consequence
        What random weights mean for this command's output ("its scores mean nothing").

    A bundle trained from a random-weight model (``test-tiny``) was trained: the note says it
    started from random weights rather than that its output means nothing.
    """
    if not getattr(model, "random_weights", False):
        return None
    base = getattr(model, "trained_from", None)
    if base:
        return (f"NOTE: model {name!r} was trained starting from RANDOM weights ({base!r}, a test model, not a "
                "pretrained one): it knows only what its own training data taught it.")
    return f"NOTE: model {name!r} has RANDOM weights: {consequence}."


def quiet_library_bars() -> None:
    """Silence the progress bars transformers draws for its own steps (loading or writing a
    model's weights: not a unit of the user's work). Hugging Face hub downloads keep theirs.

    Call it where transformers is about to be used anyway: importing it costs a second or two.
    """
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tf_logging

    hub_was_disabled = hub_utils.are_progress_bars_disabled()
    tf_logging.disable_progress_bar()  # also turns the hub's off ...
    if not hub_was_disabled:
        hub_utils.enable_progress_bars()  # ... which a download still wants


class ProgressBar:
    """A progress bar on stderr fed with :class:`backend.api.Progress` events.

    The bar starts with the first event that counts work (``total > 0``, a stage other than
    loading, cached or waiting), at the work already done (a resumed slide does not show its
    resumed tiles as speed); a unit of work served whole from the cache draws nothing. On a
    terminal it is a live tqdm bar that vanishes on :meth:`close`; in a log (stderr not a
    terminal) redraws would only add noise, so :meth:`close` writes one line, the final state.
    """

    def __init__(self, desc: str, unit: str = "tile") -> None:
        self.desc, self.unit = desc, unit
        self._bar: Any = None  # the live tqdm bar (terminal)
        self._log: dict[str, Any] | None = None  # the state to write on close (log)

    def __call__(self, p: Any) -> None:
        word = p.stage.split(" ")[0] if p.stage else ""
        if self._bar is None and self._log is None:
            if p.total <= 0 or word in _NOT_COUNTING:
                return
            if sys.stderr.isatty():
                from tqdm import tqdm

                self._bar = tqdm(total=p.total, initial=p.done, desc=self.desc, unit=self.unit,
                                 file=sys.stderr, leave=False, dynamic_ncols=True)
            else:
                self._log = {"initial": p.done, "start": time.monotonic()}
        if self._log is not None:
            self._log.update(n=p.done, total=max(p.total, p.done), word=word or self._log.get("word", ""))
            return
        if p.total > 0 and self._bar.total != p.total:
            self._bar.total = p.total
        if word:
            self._bar.set_postfix_str(word, refresh=False)
        self._bar.update(max(0, p.done - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._log is not None:
            from tqdm import tqdm

            log = self._log
            line = tqdm.format_meter(
                log["n"], log["total"], time.monotonic() - log["start"], prefix=self.desc, unit=self.unit,
                postfix=log["word"] or None, initial=log["initial"], ascii=True,
            )
            print(line, file=sys.stderr, flush=True)
        self._bar = self._log = None
