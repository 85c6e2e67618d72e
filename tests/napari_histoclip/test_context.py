"""The dock's context: panels use only its public face; the backend's ownership (BackendSlot) is
a Qt-free core; every background job starts in the task runner module."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from napari_histoclip._context import BackendSlot, DockContext, PromptSet

PACKAGE = Path(__file__).resolve().parents[2] / "napari_histoclip"
#: What starts a thread: only ``napari_histoclip/_tasks.py`` may call these.
THREAD_STARTERS = {"thread_worker", "create_worker", "Thread", "QThreadPool", "QThread", "ThreadPoolExecutor"}


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def private_reads(tree: ast.Module) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (another object's private), and
    ``getattr(x, "name", ...)`` on a context or dock (an untyped reach into it)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and node.args and ast.unparse(node.args[0]).split(".")[-1] in ("ctx", "dock", "panel"):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_a_private_read() -> None:
    tree = ast.parse("def f(ctx, self):\n    ctx._closed\n    self.dock._backend = 1\n    self._ok\n"
                     "    getattr(self.ctx, 'refine', None)\n")
    assert [line.split(": ")[1] for line in private_reads(tree)] == [
        "ctx._closed", "self.dock._backend", "getattr(self.ctx, 'refine', None)"]


def test_no_module_reads_another_objects_privates() -> None:
    found = {p.name: hits for p, tree in _modules() if (hits := private_reads(tree))}
    assert not found, found


def thread_starts(tree: ast.Module) -> list[str]:
    """Calls that start a thread or a worker (``threading.Thread(...)``, ``create_worker(...)``,
    ``QThreadPool.globalInstance()``...) and imports of napari's worker helpers."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name in THREAD_STARTERS or owner in THREAD_STARTERS:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.ImportFrom) and any(a.name in THREAD_STARTERS for a in node.names):
            found.append(f"{node.lineno}: import from {node.module}")
    return found


def test_the_thread_scan_finds_a_worker() -> None:
    tree = ast.parse("import threading\nfrom napari.qt.threading import create_worker\n"
                     "def f() -> threading.Thread:\n    threading.Thread(target=f).start()\n")
    assert [hit.split(": ")[0] for hit in thread_starts(tree)] == ["2", "4"]


def test_threads_start_only_in_the_task_runner() -> None:
    found = {p.name: hits for p, tree in _modules() if p.name != "_tasks.py" and (hits := thread_starts(tree))}
    assert not found, found


# --- BackendSlot: who owns the dock's backend --------------------------------------------------


class Made:
    """A backend double that counts its closes (the slot needs nothing else of it)."""

    def __init__(self, device: str | None, fail: bool = False) -> None:
        self.device, self.closes, self.fail = device, 0, fail

    def close(self) -> None:
        self.closes += 1
        if self.fail:
            raise OSError("index handle busy")


def test_a_made_backend_is_made_once_and_closed_on_release() -> None:
    made: list[Made] = []
    slot = BackendSlot(lambda device: made.append(Made(device)) or made[-1])
    assert slot.current is None and slot.owned
    first = slot.get("cpu")
    assert slot.get("cuda") is first and first.device == "cpu" and len(made) == 1
    slot.device_changed()  # loaded on the old device: closed, made again on next use
    assert first.closes == 1 and slot.current is None
    assert slot.get("cuda").device == "cuda"
    slot.release()
    slot.release()  # idempotent
    assert made[1].closes == 1


def test_an_injected_backend_is_never_closed_and_survives_a_device_change() -> None:
    own = Made(None)
    slot = BackendSlot(lambda device: Made(device), own)
    assert not slot.owned and slot.get("cpu") is own
    slot.device_changed()
    assert slot.current is own
    slot.release()
    assert own.closes == 0 and slot.current is None


def test_injecting_closes_the_made_one_and_a_new_factory_takes_over() -> None:
    slot = BackendSlot(lambda device: Made(device))
    made = slot.get(None)
    theirs = Made("server")
    slot.inject(theirs)
    assert made.closes == 1 and slot.current is theirs and not slot.owned
    slot.use_factory(lambda device: Made("remote"))  # the injected one is forgotten, not closed
    assert theirs.closes == 0 and slot.current is None and slot.owned
    remote = slot.get("cpu")
    assert remote.device == "remote"
    slot.use_factory(lambda device: Made("local"))
    assert remote.closes == 1 and slot.get(None).device == "local"


def test_a_failed_close_is_reported_not_raised() -> None:
    errors: list[Exception] = []
    slot = BackendSlot(lambda device: Made(device, fail=True), on_close_error=errors.append)
    slot.get(None)
    slot.release()
    assert [str(e) for e in errors] == ["index handle busy"] and slot.current is None
    bare = BackendSlot(lambda device: Made(device, fail=True))
    bare.get(None)
    with pytest.raises(OSError, match="index handle busy"):
        bare.release()


# --- the task runner's quiet jobs and daemon -----------------------------------------------------


def test_quiet_jobs_run_beside_a_task_and_report_on_the_ui_thread(qtbot, monkeypatch) -> None:
    from napari_histoclip._tasks import TaskRunner

    monkeypatch.delenv("HISTOCLIP_SYNC", raising=False)
    runner = TaskRunner(lambda state: None)
    got: list[object] = []
    runner.run_quiet(lambda: threading.current_thread() is threading.main_thread(), got.append, got.append)
    assert runner.quiet_busy
    qtbot.waitUntil(lambda: not runner.quiet_busy, timeout=5_000)
    assert got == [False]  # computed off the UI thread, delivered on it
    runner.run_quiet(lambda: 1 / 0, got.append, got.append)
    qtbot.waitUntil(lambda: not runner.quiet_busy, timeout=5_000)
    assert isinstance(got[-1], ZeroDivisionError)


def test_quiet_jobs_run_inline_in_sync_mode(qapp, monkeypatch) -> None:
    from napari_histoclip._tasks import TaskRunner, start_daemon

    monkeypatch.setenv("HISTOCLIP_SYNC", "1")
    runner = TaskRunner(lambda state: None)
    got: list[object] = []
    runner.run_quiet(lambda: threading.current_thread().name, got.append, got.append)
    assert got == [threading.current_thread().name] and not runner.quiet_busy
    done = threading.Event()
    thread = start_daemon(done.set, "histoclip-test")
    thread.join(5)
    assert done.is_set() and thread.daemon and thread.name == "histoclip-test"


# --- the dock is the context -----------------------------------------------------------------------


def test_the_plugin_dock_is_a_dock_context_and_serves_the_panels(plugin_dock, plugin_viewer) -> None:
    from napari_histoclip._widgets._prompts import PromptRow

    dock = plugin_dock
    assert isinstance(dock, DockContext)
    dock.zero_shot.prompts.set_rows([PromptRow("tumor", "#ff0000"), PromptRow("stroma", "#00ff00")])
    dock.zero_shot.templates.value = "an H&E image of {}.\n\n"
    dock.zero_shot.threshold.value = 0.25
    assert dock.prompt_set() == PromptSet(("tumor", "stroma"), (), ("an H&E image of {}.",), ("#ff0000", "#00ff00"), 0.25)
    assert dock.painted_marks("/no/such/slide.svs") == {}
    local = dock.backend
    dock.use_backend_factory(Made, "the server's device: cuda")  # as the picker connects to a server
    assert not dock.device.enabled and dock.device.tooltip == "the server's device: cuda"
    remote = dock.backend
    assert isinstance(remote, Made) and remote is not local
    dock.use_backend_factory(Made)
    assert remote.closes == 1 and dock.device.enabled and not dock.device.tooltip
    assert not dock.closed
