"""Cohort triage: one slide-level verdict per slide of a cohort, as a table that resumes.

The CLI (``histoclip zero-shot COHORT --slide-level --out table.csv``) and the dock's triage
list both go through :func:`triage`, a generator over a :class:`backend.api.Backend` (local or
remote): each slide's :meth:`~backend.api.Backend.slide_zero_shot` becomes a
:class:`TriageRow`. :class:`TriageTable` writes the rows as they come to ``OUT.partial`` (one
flushed, fsynced line each, under a first line that records the settings), so a killed run
loses at most the slide in progress; run again with the same settings it skips the slides
already there (and the embedding cache skips every slide already embedded). The finished table
is written atomically to ``OUT`` and the partial file removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path

from backend import api
from backend.errors import CancelledError, HistoclipError, InputError

SETTINGS_PREFIX = "# histoclip triage settings: "


@dataclass(frozen=True)
class TriageRow:
    """One slide's verdict: ``probabilities`` and pooled ``scores`` per class, in class order;
    ``error`` (and no verdict) when the slide could not be read."""

    path: str
    slide_name: str
    predicted: str
    runner_up: str
    n_tiles: int
    probabilities: tuple[float, ...]
    scores: tuple[float, ...]
    error: str = ""
    labels: tuple[str, ...] = ()  # the classes of ``probabilities`` (not a column of the table)

    @classmethod
    def of(cls, path: str, result: api.SlideZeroShotResult) -> TriageRow:
        return cls(path, result.slide_name, result.predicted, result.runner_up, result.n_tiles,
                   result.probabilities, result.scores, labels=tuple(result.labels))


def columns(labels: Iterable[str]) -> list[str]:
    """The table's header: slide, path, predicted, runner-up, tiles, then ``p:LABEL`` and
    ``score:LABEL`` of every class."""
    labels = list(labels)
    return (["slide", "path", "predicted", "runner_up", "n_tiles"] + [f"p:{lab}" for lab in labels]
            + [f"score:{lab}" for lab in labels] + ["error"])


def _cells(row: TriageRow, n_classes: int) -> list[str]:
    probs = [f"{p:.6f}" for p in row.probabilities] or [""] * n_classes
    scores = [f"{s:.6f}" for s in row.scores] or [""] * n_classes
    return [row.slide_name, row.path, row.predicted, row.runner_up, str(row.n_tiles), *probs, *scores, row.error]


def _line(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def read_table(path: str | os.PathLike[str]) -> tuple[tuple[str, ...], list[TriageRow]]:
    """The classes and rows of a triage table (finished or partial)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read the triage table ({e.strerror or e})") from e
    lines = [ln for ln in lines if not ln.startswith("#")]
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header or header[:5] != columns([])[:5] or header[-1] != "error":
        raise InputError(f"{path}: not a histoclip triage table (its header is {header})")
    labels = tuple(h.removeprefix("p:") for h in header if h.startswith("p:"))
    n = len(labels)
    rows = []
    for cells in reader:
        if len(cells) != len(header):
            continue  # a line cut by a kill
        probs = tuple(float(v) for v in cells[5 : 5 + n] if v != "")
        scores = tuple(float(v) for v in cells[5 + n : 5 + 2 * n] if v != "")
        rows.append(TriageRow(cells[1], cells[0], cells[2], cells[3], int(cells[4]), probs, scores, cells[-1]))
    return labels, rows


class TriageTable:
    """The resumable CSV at ``out`` for one set of ``settings`` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike[str], settings: dict) -> None:
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.done: dict[str, TriageRow] = {}

    def resume(self) -> set[str]:
        """The paths already done in a partial table of the same settings (a partial table of
        other settings is an error that names them)."""
        if not self.partial.exists():
            return set()
        first = self.partial.read_text(encoding="utf-8").split("\n", 1)[0]
        try:
            before = json.loads(first.removeprefix(SETTINGS_PREFIX)) if first.startswith(SETTINGS_PREFIX) else None
        except json.JSONDecodeError:
            before = None
        if before != self.settings:
            changed = sorted(k for k in set(before or {}) | set(self.settings)
                             if (before or {}).get(k) != self.settings.get(k))
            raise InputError(
                f"{self.partial}: an unfinished triage run with other settings ({', '.join(changed) or 'unreadable'}) "
                "is here; run it again with its settings to finish it, or delete the file to start afresh"
            )
        _, rows = read_table(self.partial)
        self.done = {r.path: r for r in rows if not r.error}
        return set(self.done)

    def start(self, labels: Iterable[str]) -> None:
        """Open the partial table (a new one gets the settings line and the header)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.labels = tuple(labels)
        if not self.partial.exists() or not self.done:
            text = SETTINGS_PREFIX + json.dumps(self.settings, sort_keys=True) + "\n" + _line(columns(self.labels))
            text += "".join(_line(_cells(r, len(self.labels))) for r in self.done.values())
            self.partial.write_text(text, encoding="utf-8")

    def add(self, row: TriageRow) -> None:
        """Append one row, flushed and fsynced: a kill after this keeps it."""
        with open(self.partial, "a", encoding="utf-8") as f:
            f.write(_line(_cells(row, len(self.labels))))
            f.flush()
            os.fsync(f.fileno())
        if not row.error:
            self.done[row.path] = row

    def finish(self, order: list[str], failed: dict[str, TriageRow]) -> Path:
        """Write the table atomically at ``out`` (rows in ``order``) and remove the partial one."""
        from backend.atomic import atomic_write_text

        rows = [self.done.get(p) or failed[p] for p in order if p in self.done or p in failed]
        text = _line(columns(self.labels)) + "".join(_line(_cells(r, len(self.labels))) for r in rows)
        atomic_write_text(self.out, text)
        self.partial.unlink(missing_ok=True)
        return self.out


def cohort_slides(cohort: Iterable[str]) -> tuple[list[str], str | None, str | None, api.TileOptions | None]:
    """``(slide paths, index model name, index model id, index tiles)`` of a cohort given as slide
    files and folders, or as one cohort index directory (its slides, model and tiles)."""
    from backend.index.store import DB_NAME
    from backend.slides import expand_slides

    cohort = list(cohort)
    if len(cohort) == 1 and (Path(cohort[0]) / DB_NAME).is_file():
        from backend.index import CohortIndex
        from backend.index.recorded import recorded_tiles

        with CohortIndex.open(cohort[0], read_only=True) as index:
            slides = [s.slide_path for s in index.slides()]
            tiles = recorded_tiles({s.spec_key for s in index.slides()}, cohort[0])
            return slides, index.model_name, index.model_id, tiles
    return expand_slides(cohort), None, None, None


def triage(
    backend: api.Backend,
    slides: list[str],
    request: api.SlideZeroShotRequest,
    *,
    skip: AbstractSet[str] = frozenset(),
    progress: api.ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[TriageRow]:
    """Each slide's verdict by ``request`` (its ``slide`` replaced), in order, skipping ``skip``.

    A slide that cannot be read gives a row with ``error``; cancel stops between slides (and
    inside a slide's embedding), raising :class:`CancelledError`.
    """
    todo = [p for p in slides if p not in skip]
    done = len(slides) - len(todo)
    if progress is not None:
        progress(api.Progress(done, len(slides), f"slides: {done} already done"))
    for path in todo:
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"triage stopped with {len(slides) - done} of {len(slides)} slides to go")
        slide = replace(request.slide, path=path)
        try:
            result = backend.slide_zero_shot(replace(request, slide=slide), cancel=cancel)
        except CancelledError:
            raise
        except HistoclipError as e:
            yield TriageRow(path, Path(path).name, "", "", 0, (), (), error=str(e))
        else:
            yield TriageRow.of(path, result)
        done += 1
        if progress is not None:
            progress(api.Progress(done, len(slides), f"slide {Path(path).name}"))
