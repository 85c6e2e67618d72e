"""Jobs: backend calls run by worker threads from one priority queue, never on the event loop.

A job belongs to the id of the token that made it (never reused, see
:func:`backend.server.auth.token_id`), not to the token's name. A call answered at once (a
relabel from the cache) is run the same way but is no job: it leaves no record. Finished
records are kept per owner (the newest ``MAX_KEPT`` of each), so one token's traffic never
pushes out another's results.

Each job keeps its progress events (numbered, so a client that lost its event stream
reattaches with ``Last-Event-ID`` and misses nothing) and, once done, its result in memory.
Jobs handed to a client (202) are recorded on disk (``state_dir/jobs/ID.json``, written
atomically at each change of state and at most once a second for progress), and so is the
result of one that finished (``ID.result``, the bytes ``/v1/jobs/ID/result`` sends), so a
restarted server still serves it; a server that starts finds the records of jobs that were
queued or running and marks them ``interrupted``. Their work is not lost: the embedding cache
keeps every finished batch, so a rerun resumes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from backend.api import Progress
from backend.atomic import atomic_write_text
from backend.errors import CancelledError

log = logging.getLogger("histoclip.server")

MAX_KEPT = 2000  # finished job records kept in memory and on disk, per owner (token id)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Priority(IntEnum):
    INTERACTIVE = 0
    BULK = 1


class QueueFullError(Exception):
    """Too many jobs queued (in all, or for one token): answer 429 with Retry-After."""


@dataclass
class Job:
    id: str
    call: str
    token: str  # the token's name, for people
    slide: str
    priority: int
    owner: str = ""  # the token's id: who may see, cancel and fetch this job
    work: Callable[[Job], Any] | None = None
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: Progress = Progress(0, 0, "queued")
    error: dict[str, Any] | None = None
    result: Any = None
    exc: BaseException | None = None  # what the call raised: a direct answer sends its status
    persisted: bool = False
    restored: bool = False  # read from disk at start: its result, if any, is in ID.result
    cancel: threading.Event = field(default_factory=threading.Event)
    events: list[dict[str, Any]] = field(default_factory=list)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _saved: float = 0.0

    def record(self) -> dict[str, Any]:
        """The JSON a client polls and the disk keeps (no result, no request)."""
        return {
            "id": self.id, "call": self.call, "token": self.token, "owner": self.owner, "slide": self.slide,
            "state": str(self.state), "created": self.created, "started": self.started,
            "finished": self.finished, "error": self.error,
            "progress": {"done": self.progress.done, "total": self.progress.total, "stage": self.progress.stage},
        }

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Add event ``kind`` and wake every stream waiting on this job."""
        with self._lock:
            self.events.append({"id": len(self.events) + 1, "event": kind, "data": data})
            waiters = list(self._waiters)
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that loop has closed
                pass

    def watch(self) -> asyncio.Event:
        """An asyncio event (of the running loop) set at every new event of this job."""
        ev = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), ev))
        return ev

    def unwatch(self, ev: asyncio.Event) -> None:
        with self._lock:
            self._waiters = [(lp, e) for lp, e in self._waiters if e is not ev]


class JobManager:
    """Worker threads over a priority queue (interactive before bulk), with job records.

    ``workers`` threads take any job; ``interactive_workers`` more take only interactive
    ones, so a relabel from the cache does not wait for a slide being embedded.
    """

    def __init__(self, state_dir: Path, *, workers: int = 1, interactive_workers: int = 1,
                 max_queued: int = 64, max_per_token: int = 4,
                 public_error: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 public_text: Callable[[str], str] | None = None) -> None:
        self.dir = Path(state_dir) / "jobs"
        # What a client may see of an error and of a progress stage (no server paths).
        self.public_error, self.public_text = public_error, public_text
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_queued, self.max_per_token = max_queued, max_per_token
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._any: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self._interactive: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self.durations: dict[str, list[float]] = {}  # call -> [count, sum seconds] for metrics
        self._load_records()
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"histoclip-{name}-{i}", daemon=True)
            for q, n, name in ((self._any, workers, "worker"), (self._interactive, interactive_workers, "interactive"))
            for i in range(n)
        ]
        for t in self._threads:
            t.start()

    # --- records ----------------------------------------------------------------------------

    def _load_records(self) -> None:
        records = []
        for path in self.dir.glob("*.json"):
            try:
                records.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                log.warning("job record %s is unreadable (%s); skipped", path, e)
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            # A record from before jobs had owners belongs to no token (a name may have been
            # reused), but on a server without tokens everyone was and is "anonymous".
            token = str(r.get("token", ""))
            r["owner"] = str(r.get("owner") or ("anonymous" if token == "anonymous" else ""))
            by_owner.setdefault(r["owner"], []).append(r)
        newest = [r for rs in by_owner.values() for r in sorted(rs, key=lambda r: r.get("created", 0))[-MAX_KEPT:]]
        for r in sorted(newest, key=lambda r: r.get("created", 0)):
            owner = r["owner"]
            p = r.get("progress") or {}
            job = Job(id=str(r["id"]), call=str(r["call"]), token=str(r.get("token", "")), slide=str(r.get("slide", "")),
                      owner=owner, priority=Priority.BULK, state=JobState(r["state"]), created=float(r.get("created", 0)),
                      started=r.get("started"), finished=r.get("finished"), error=r.get("error"),
                      progress=Progress(int(p.get("done", 0)), int(p.get("total", 0)), str(p.get("stage", ""))),
                      persisted=True, restored=True)
            if not job.state.finished:
                job.state, job.finished = JobState.INTERRUPTED, time.time()
                job.error = {"type": "JobInterruptedError", "message": (
                    f"job {job.id} ({job.call}) was stopped by a server restart; run it again: it resumes from the cache")}
                self._save(job, force=True)
            job.emit("end", job.record())
            self._jobs[job.id] = job

    def _save(self, job: Job, *, force: bool = False) -> None:
        if not job.persisted:
            return
        now = time.monotonic()
        if force or now - job._saved >= 1.0:
            job._saved = now
            atomic_write_text(self.dir / f"{job.id}.json", json.dumps(job.record()))

    def persist(self, job: Job) -> None:
        """Keep ``job`` on disk from now on (it was handed to a client)."""
        job.persisted = True
        self._save(job, force=True)
        if job.state is JobState.DONE:  # it finished before it was handed out
            self._save_result(job)

    def _save_result(self, job: Job) -> None:
        from backend.atomic import atomic_path
        from backend.remote.wire import encode

        body, _ = encode(job.result)
        with atomic_path(self.dir / f"{job.id}.result") as tmp:
            tmp.write_bytes(body)

    def stored_result(self, job: Job) -> tuple[bytes, str] | None:
        """The body and content type of the result a finished job left on disk, if it did."""
        from backend.remote.wire import BUNDLE_TYPE, JSON_TYPE, MAGIC

        try:
            body = (self.dir / f"{job.id}.result").read_bytes()
        except FileNotFoundError:
            return None
        return body, BUNDLE_TYPE if body.startswith(MAGIC) else JSON_TYPE

    # --- the queue --------------------------------------------------------------------------

    def submit(self, call: str, work: Callable[[Job], Any], *, token: str, slide: str = "",
               priority: int = Priority.INTERACTIVE, owner: str | None = None) -> Job:
        """Queue ``work(job)`` for the token named ``token`` whose id is ``owner`` (default: the
        name); raises :class:`QueueFullError` past the limits.

        The per-token limit counts the owner's queued or running work of the same kind
        (interactive or bulk): four embeds waiting do not stop a relabel from the cache.
        """
        owner = token if owner is None else owner
        with self._lock:
            active = [j for j in self._jobs.values() if j.state in (JobState.QUEUED, JobState.RUNNING)]
            if sum(j.state is JobState.QUEUED for j in active) >= self.max_queued:
                raise QueueFullError(f"{self.max_queued} jobs are already queued on this server")
            mine = [j for j in active if j.owner == owner and (j.priority == Priority.BULK) == (priority == Priority.BULK)]
            if len(mine) >= self.max_per_token:
                kind = "bulk" if priority == Priority.BULK else "interactive"
                raise QueueFullError(
                    f"token {token!r} already has {self.max_per_token} unfinished {kind} jobs (queued or running)"
                )
            job = Job(id=uuid.uuid4().hex, call=call, token=token, slide=slide, priority=priority, work=work, owner=owner)
            self._jobs[job.id] = job
            self._trim(owner)
        item = (int(priority), next(self._seq), job)
        self._any.put(item)
        if priority == Priority.INTERACTIVE:
            self._interactive.put(item)  # whichever thread gets it first runs it
        return job

    def _trim(self, owner: str) -> None:
        """Forget ``owner``'s oldest finished jobs past MAX_KEPT (no other owner's)."""
        theirs = [j for j in self._jobs.values() if j.owner == owner]
        done = [j for j in theirs if j.state.finished]
        for j in sorted(done, key=lambda j: j.finished or 0)[: max(0, len(theirs) - MAX_KEPT)]:
            del self._jobs[j.id]
            if j.persisted:
                (self.dir / f"{j.id}.json").unlink(missing_ok=True)
                (self.dir / f"{j.id}.result").unlink(missing_ok=True)

    def forget(self, job: Job) -> None:
        """Drop the finished ``job`` that was answered at once and never handed out: it is no job."""
        with self._lock:
            if job.state.finished and not job.persisted:
                self._jobs.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def queue_depth(self) -> int:
        with self._lock:
            return sum(j.state is JobState.QUEUED for j in self._jobs.values())

    def cancel(self, job: Job) -> None:
        """Ask ``job`` to stop: a queued job ends now, a running one after its current batch."""
        job.cancel.set()
        with job._lock:
            queued = job.state is JobState.QUEUED
            if queued:
                job.state = JobState.CANCELLED
        if queued:
            self._finish(job, JobState.CANCELLED,
                         error={"type": "CancelledError", "message": f"job {job.id} cancelled before it started"})

    def close(self) -> None:
        for q in (self._any, self._interactive):
            for _ in self._threads:
                q.put((99, next(self._seq), None))

    # --- workers ----------------------------------------------------------------------------

    def _work(self, q: queue.PriorityQueue[tuple[int, int, Job | None]]) -> None:
        while True:
            _, _, job = q.get()
            if job is None:
                return
            with job._lock:
                if job.state is not JobState.QUEUED:
                    continue  # cancelled, or taken by the other queue's thread
                job.state, job.started = JobState.RUNNING, time.time()
            self._save(job, force=True)
            job.emit("state", job.record())
            try:
                job.result = job.work(job) if job.work else None
            except CancelledError as e:
                self._finish(job, JobState.CANCELLED, error={"type": "CancelledError", "message": str(e)}, exc=e)
            except Exception as e:  # noqa: BLE001 - reported to the client, as the local call would raise it
                if not isinstance(e, _expected()):
                    log.exception("job %s (%s) failed", job.id, job.call)
                self._finish(job, JobState.FAILED, exc=e)
            else:
                self._finish(job, JobState.DONE)

    def _finish(self, job: Job, state: JobState, *, error: dict[str, Any] | None = None,
                exc: BaseException | None = None) -> None:
        from backend.remote.wire import error_to_wire

        if exc is not None and error is None:
            error = error_to_wire(exc)[1]["error"]
        if error is not None and self.public_error is not None:
            error = self.public_error(error)
        job.state, job.finished, job.work = state, time.time(), None
        job.error = error
        job.exc = exc
        if job.started is not None:
            stats = self.durations.setdefault(job.call, [0, 0.0])
            stats[0] += 1
            stats[1] += job.finished - job.started
        self._save(job, force=True)
        if state is JobState.DONE and job.persisted:
            try:
                self._save_result(job)
            except OSError as e:  # the client that waits still gets it from memory
                log.warning("job %s: its result could not be kept on disk (%s)", job.id, e)
        job.emit("end", job.record())

    def progress_of(self, job: Job) -> Callable[[Progress], None]:
        """The progress callback handed to the backend call of ``job``."""

        def report(p: Progress) -> None:
            if self.public_text is not None:  # "loading model /srv/models/x": the name only
                p = Progress(p.done, p.total, self.public_text(p.stage))
            job.progress = p
            job.emit("progress", {"done": p.done, "total": p.total, "stage": p.stage})
            self._save(job)

        return report


def _expected() -> tuple[type[BaseException], ...]:
    from backend.errors import HistoclipError

    return (HistoclipError,)
