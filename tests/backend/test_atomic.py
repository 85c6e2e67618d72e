"""Atomic writes survive crashes: files are fsynced before and their folder after the rename,
temps of killed writers are removed, a bundle path holds the old or the new bundle even when
the writer is killed between steps, and a folder that is not a bundle is never overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import backend.atomic as atomic
from backend.atomic import atomic_path, atomic_write_text, remove_stale_temps, replace_dir, temp_sibling
from backend.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _named_for(path: Path, pid: int, kind: str = "tmp", suffix: str | None = None) -> Path:
    """A temp name as ``temp_sibling`` gives it, but for process ``pid``."""
    mine = temp_sibling(path, kind, path.suffix if suffix is None else suffix)
    return mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{pid}-", 1))


def test_atomic_path_fsyncs_the_file_then_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a: object, b: object) -> None:
        calls.append(("replace", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.json"
    atomic_write_text(target, "{}")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert Path(calls[0][1]).parent == tmp_path and Path(calls[0][1]).name.startswith(".out.tmp-")
    assert calls[1][1] == str(target) and calls[2][1] == str(tmp_path)
    assert target.read_text() == "{}"


def test_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    dead = _named_for(target, _dead_pid())
    dead.write_bytes(b"half a checkpoint")
    live = _named_for(target, os.getppid())  # a live process (pytest's parent)
    live.write_bytes(b"someone is writing this")
    other = _named_for(tmp_path / "other.pt", _dead_pid())  # another target's: not ours to judge
    other.write_bytes(b"x")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert not dead.exists() and live.exists() and other.exists()
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "last.pt"])


def test_a_killed_torch_save_leaves_no_temp_after_the_next_run(tmp_path: Path) -> None:
    """Really kill a writer inside atomic_path, then write again: its temp is gone."""
    target = tmp_path / "checkpoints" / "last.pt"
    script = (
        "import os, sys\n"
        "from backend.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os._exit(9)  # killed mid-write: no cleanup runs\n"
    )
    subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO_ROOT, check=False)
    left = [p for p in target.parent.iterdir() if p.name.startswith(".last.tmp-")]
    assert len(left) == 1 and not target.exists()
    assert remove_stale_temps(target) == left
    assert list(target.parent.iterdir()) == []


# --- folders ------------------------------------------------------------------------------


def _bundle(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "histoclip.json").write_text(json.dumps({"version": version}))
    (folder / "weights").write_bytes(version.encode() * 100)
    return folder


def _version(folder: Path) -> str:
    return json.loads((folder / "histoclip.json").read_text())["version"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "aside"])
def test_replace_dir_swaps_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = _bundle(tmp_path / "model", "old")
    replace_dir(_bundle(temp_sibling(target), "new"), target)
    assert _version(target) == "new" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_atomic_exchange_is_used_where_the_os_has_it(tmp_path: Path) -> None:
    a, b = _bundle(tmp_path / "a", "a"), _bundle(tmp_path / "b", "b")
    if not atomic.exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    assert (_version(a), _version(b)) == ("b", "a")


def test_a_writer_killed_between_the_renames_leaves_a_loadable_bundle(tmp_path: Path) -> None:
    """Without an atomic exchange: kill the writer after the old bundle went aside, before the
    new one came in; the next reader finds the old bundle at the path."""
    from backend.models.registry import read_manifest

    target = _bundle(tmp_path / "model", "old")
    new = _bundle(tmp_path / ".model.build", "new")
    script = (
        "import os, sys\n"
        "import backend.atomic as atomic\n"
        "atomic.exchange = lambda a, b: False\n"
        "real, calls = os.replace, []\n"
        "def replace(a, b):\n"
        "    calls.append(b)\n"
        "    if len(calls) == 2:\n"
        "        os._exit(9)  # killed between moving the old bundle aside and the new one in\n"
        "    real(a, b)\n"
        "os.replace = replace\n"
        "atomic.replace_dir(sys.argv[1], sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(new), str(target)], cwd=REPO_ROOT, check=False)
    assert not target.exists()  # the moment the old code left with no bundle at all ...
    assert read_manifest(target)["version"] == "old"  # ... is recovered by the next reader
    assert _version(target) == "old" and not [p for p in tmp_path.iterdir() if ".model.old-" in p.name]


def test_a_replacement_failing_between_the_renames_puts_the_old_bundle_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = _bundle(tmp_path / "model", "old")
    new = _bundle(temp_sibling(target), "new")
    real, calls = os.replace, []

    def replace(a: object, b: object) -> None:
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        replace_dir(new, target)
    monkeypatch.undo()
    assert _version(target) == "old"


def test_an_aside_copy_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "model"
    _bundle(_named_for(target, os.getppid(), "old", ""), "old")  # its writer is still running
    assert not atomic.recover_dir(target) and not target.exists()
    _bundle(_named_for(target, _dead_pid(), "old", ""), "older")
    assert atomic.recover_dir(target) and _version(target) == "older"


def test_save_bundle_never_overwrites_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    from backend.models import load_model, save_bundle

    model = load_model("test-tiny", device="cpu")
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.docx").write_bytes(b"years of work")
    with pytest.raises(InputError, match=r"results.*not a histoclip bundle"):
        save_bundle(model, precious, overwrite=True)
    assert (precious / "thesis.docx").read_bytes() == b"years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        save_bundle(model, a_file, overwrite=True)

    bundle = save_bundle(model, tmp_path / "tiny", name="first")
    stale = _named_for(bundle, _dead_pid(), "tmp", "")
    stale.mkdir()  # a save killed before, e.g. inside the safetensors write
    save_bundle(model, bundle, name="second", overwrite=True)
    assert json.loads((bundle / "histoclip.json").read_text())["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "results", "tiny"]
    assert load_model(bundle, device="cpu").model_id.startswith("bundle:second@")


def test_leftover_temps_sees_what_atomic_writes_leave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What tests assert "no temp left" with: it must see a real leftover (the old glob
    ``.*.tmp`` never matched these names)."""
    from backend.atomic import leftover_temps

    atomic_write_text(tmp_path / "tiles.geojson", "{}")
    assert leftover_temps(tmp_path) == []
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # the cleanup is lost
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "tiles.geojson", "{}")
    monkeypatch.undo()
    (left,) = leftover_temps(tmp_path)
    assert left.name.startswith(".tiles.tmp-") and left.suffix == ".geojson"
    assert not list(tmp_path.glob(".*.tmp"))  # the glob the tests used to rely on
    aside = _bundle(temp_sibling(tmp_path / "model", "old"), "x")
    assert aside in leftover_temps(tmp_path)
