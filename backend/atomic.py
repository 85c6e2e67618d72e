"""Writing files and folders so that a reader never sees half of one: write beside, then rename.

Durability: a file is fsynced before it is renamed into place and its folder after, so a
power cut leaves the old file or the new one, never an empty one (the rename alone is atomic
only against other processes, not against a crash of the machine).

Temporaries are named ``.<name>.tmp-<host>-<pid>-<random>[suffix]`` beside the target. A
process killed while writing (``kill -9``, out of memory, a closed laptop) cannot remove its
own, and a checkpoint's temp can be gigabytes, so each write first removes the temps of the
same target left by *dead* processes of this machine (the host tag keeps a shared filesystem's
other machines' live writers safe; a live pid, even a reused one, is never touched).

Folders (model bundles) are replaced with an atomic exchange where the OS has one (Linux
``renameat2(RENAME_EXCHANGE)``): the path holds the old folder, then the new one, with no moment
between. Elsewhere the old folder is renamed aside (``.<name>.old-<host>-<pid>-<random>``) and
the new one renamed in; a process killed between the two renames leaves the path empty and
the aside copy complete, and :func:`recover_dir` (called by every bundle reader and writer)
renames it back once its writer is dead. Either way a reader finds the old or the new bundle.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from backend.errors import InputError

_TMP = "tmp"
_OLD = "old"


def _host_tag() -> str:
    # short, filename-safe, the same for every process of this machine
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_sibling(path: str | os.PathLike[str], kind: str = _TMP, suffix: str = "") -> Path:
    """A fresh hidden name beside ``path`` that carries this host and pid (see module docstring)."""
    final = Path(path)
    stem = final.stem if suffix else final.name
    return final.with_name(f".{stem}.{kind}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _pattern(final: Path, kind: str, suffix: str) -> re.Pattern[str]:
    stem = final.stem if suffix else final.name
    return re.compile(
        rf"\.{re.escape(stem)}\.{kind}-(?P<host>[0-9a-f]{{6}})-(?P<pid>\d+)-[0-9a-f]{{8}}{re.escape(suffix)}"
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told)."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) is not a probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def _orphans(final: Path, kind: str, suffix: str) -> list[Path]:
    """Siblings of ``final`` of this ``kind`` left by dead processes of this host."""
    pattern, host = _pattern(final, kind, suffix), _host_tag()
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    found = []
    for name in names:
        m = pattern.fullmatch(name)
        if m and m["host"] == host and not pid_alive(int(m["pid"])):
            found.append(final.parent / name)
    return found


def remove_stale_temps(path: str | os.PathLike[str], suffix: str | None = None) -> list[Path]:
    """Remove the temporaries of ``path`` (files or folders) left by dead processes of this host.

    ``suffix`` is the suffix the temps carry (default: ``path``'s own, as :func:`atomic_path`
    gives them; ``""`` for folders). Returns what was removed.
    """
    final = Path(path)
    removed = []
    for stale in _orphans(final, _TMP, final.suffix if suffix is None else suffix):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def leftover_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Every temporary (file or folder) of this module's naming in ``folder``, whoever left it.

    For tests and housekeeping: after a finished write there should be none.
    """
    pattern = re.compile(rf"\..+\.(?:{_TMP}|{_OLD})-[0-9a-f]{{6}}-\d+-[0-9a-f]{{8}}.*")
    root = Path(folder)
    return sorted(p for p in root.iterdir() if pattern.fullmatch(p.name)) if root.is_dir() else []


# fsync on a folder is refused by some filesystems (FUSE, some network mounts): durability
# there is the filesystem's business, and the rename itself already happened
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM, errno.EACCES})


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or create in ``folder`` durable (no-op where folders cannot be synced)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        if e.errno in _NO_DIR_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and folder under ``root`` (a bundle about to be renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that go by it still can) for
    the block to write; fsynced and renamed onto ``path`` if the block succeeds, removed if it
    fails. Temps of the same target left by dead processes are removed first. ``mode`` (e.g.
    0o600 for a secret): the file's permissions instead of the umask's."""
    final = Path(path)
    if final.is_dir():
        raise InputError(f"{final} is a directory: give a file name")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = temp_sibling(final, _TMP, final.suffix)
    try:
        yield tmp
        if tmp.is_file():  # a writer may have made it private (mkstemp: 0600): share as open() would
            os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask. Read from /proc where it can be (setting it to read it, as
    ``os.umask`` must, briefly changes it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """Write a UTF-8 text file atomically (see :func:`atomic_path`); with ``mode`` the file has
    those permissions from its creation on (a secret is never readable by others, not even
    briefly)."""
    with atomic_path(path, mode=mode) as tmp:
        if mode is None:
            tmp.write_text(text, encoding="utf-8")
        else:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as f:
                f.write(text)
    return Path(path)


# --- folders ------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the OS or the filesystem cannot.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):  # a libc without it (glibc < 2.28, musl < 1.2.4)
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or fs lacks it
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def recover_dir(path: str | os.PathLike[str]) -> bool:
    """Put back the previous folder of ``path`` if a replacement was killed half-way.

    Only when ``path`` is missing and an aside copy of a dead writer of this host exists (the
    newest, should there be several). Returns True if it restored one.
    """
    final = Path(path)
    if final.exists() or not final.parent.is_dir():
        return False
    asides = sorted(_orphans(final, _OLD, ""), key=lambda p: p.stat().st_mtime, reverse=True)
    for aside in asides:
        try:
            os.replace(aside, final)
        except OSError:
            continue  # another reader restored it first
        fsync_dir(final.parent)
        return True
    return final.exists()


def replace_dir(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing what is there (see module docstring).

    ``tmp`` must be beside ``path`` (same filesystem) and fully written; it is fsynced here.
    """
    tmp, final = Path(tmp), Path(path)
    fsync_tree(tmp)
    recover_dir(final)
    if not final.exists():
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return
    if exchange(tmp, final):  # final is the new folder now, tmp the old one
        fsync_dir(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    aside = temp_sibling(final, _OLD)
    os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(aside, final)  # put the previous folder back
        raise
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def make_temp_dir(path: str | os.PathLike[str]) -> Path:
    """A new empty folder beside ``path`` to build a replacement in (for :func:`replace_dir`),
    after removing those that dead processes left for the same ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final, "")
    tmp = temp_sibling(final, _TMP)
    tmp.mkdir()
    return tmp
