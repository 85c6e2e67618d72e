"""What a client may name: the slides, indexes and bundles under the server's roots.

A client never sends a server path. It names an entry by its opaque id (a hash of the root
and the relative path) or by the relative path exactly as the listing shows it; both are looked
up in a table made by walking the roots, so no client string is ever joined to a path. Walking
does not follow symlinked folders, and a symlinked file is listed only when its target is
inside a root. Before an entry is used its real path is checked again (a link may have been
swapped since the walk): still inside its root, still a file (or folder) of the right kind.

An index or a bundle is a folder: served (and written to) only when every file and folder in
it resolves inside its root, however deep; a link in it to a file outside hides the entry.

Which paths are slides is the backend's one rule (``backend.slides.slide_target``, the rule of
``expand_slides``): slide files and DICOM WSI folders (one slide, however many ``.dcm`` files);
a ``.dcm`` file is part of its folder's slide, not a slide of its own. A DICOM folder is served
only when every one of its ``.dcm`` files resolves inside the root.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from backend.errors import InputError, SlideNotFoundError, UnknownModelError

_NEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_ENTRIES = 200_000
RESCAN_AFTER_S = 10.0
MIN_RESCAN_GAP_S = 1.0  # a flood of unknown ids must not become a flood of walks


class EntryKind(StrEnum):
    SLIDE = "slide"
    INDEX = "index"
    BUNDLE = "bundle"
    CORPUS = "corpus"  # a caption corpus file (backend.text.corpus)


@dataclass(frozen=True)
class Entry:
    id: str
    relpath: str  # posix, relative to its root
    root: Path
    path: Path  # root / relpath (real path checked again by Catalog.resolve)
    size: int


def _inside(path: str, root: Path) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([real, str(root)]) == str(root)


def _contained(folder: str, root: Path) -> bool:
    """Whether everything in ``folder`` (files, folders, links, at any depth) resolves inside
    ``root``: an index's or a bundle's files may be links, the server reads and writes through
    them. Links are not followed while walking, each is checked by where it points."""
    todo, seen = [folder], set()
    while todo:  # the folder, then the real folders its links to folders point at
        real = os.path.realpath(todo.pop())
        if real in seen:
            continue
        seen.add(real)
        if not _inside(real, root):
            return False
        for top, dirs, files in os.walk(real, followlinks=False):
            for name in dirs + files:
                path = os.path.join(top, name)
                if not _inside(path, root):
                    return False
                if os.path.islink(path) and os.path.isdir(path):
                    todo.append(path)  # inside the root, but what it holds may link out
    return True


def _companions_inside(path: Path, root: Path) -> bool:
    """Whether the data files a slide file reads besides itself (a MIRAX data folder, VMS
    image files, a VSI's ``_NAME_`` folder) all resolve inside ``root``."""
    from backend.slides.fingerprint import companion_files
    from backend.slides.sidecar import vsi_side_folder

    suffix = path.suffix.lower()
    folders = {".mrxs": path.with_suffix(""), ".vsi": vsi_side_folder(path)}
    folder = folders.get(suffix)
    if folder is not None and os.path.lexists(folder) and not _contained(str(folder), root):
        return False
    return all(_inside(str(f), root) for f in companion_files(path))


def _size(path: str, is_dir: bool, kind: EntryKind) -> int:
    """Bytes of a slide: the file, or the ``.dcm`` files of a DICOM folder (0 for other folders)."""
    if not is_dir:
        return os.stat(path).st_size
    if kind is not EntryKind.SLIDE:
        return 0
    from backend.slides.dicom import dicom_files

    return sum(f.stat().st_size for f in dicom_files(Path(path)))


class Catalog:
    """The entries of one kind under ``roots`` (absolute, real paths); safe from any thread."""

    def __init__(self, kind: EntryKind, roots: tuple[Path, ...]) -> None:
        self.kind = kind
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._by_path: dict[str, Entry] = {}
        self._scanned = -1e9

    # --- walking ------------------------------------------------------------------------------

    def _accept(self, path: str, is_dir: bool, root: Path) -> bool:
        if self.kind is EntryKind.SLIDE:
            from backend.slides.dicom import dicom_files
            from backend.slides.folders import slide_target

            if is_dir != os.path.isdir(path) or slide_target(path) != Path(path):
                return False  # not a slide by the backend's rule (a .dcm file, a MIRAX data folder ...)
            if is_dir:
                return all(_inside(str(f), root) for f in dicom_files(Path(path)))
            return _companions_inside(Path(path), root)
        if self.kind is EntryKind.CORPUS:
            from backend.text.corpus import CORPUS_SUFFIXES

            return not is_dir and os.path.isfile(path) and Path(path).suffix.lower() in CORPUS_SUFFIXES
        marker = "meta.sqlite" if self.kind is EntryKind.INDEX else "histoclip.json"
        # Like a DICOM folder's files: an index's or a bundle's files must all resolve inside the root.
        return is_dir and os.path.isfile(os.path.join(path, marker)) and _contained(path, root)

    def _walk(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        for root in self.roots:
            for top, dirs, files in os.walk(root, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                names = [(f, False) for f in sorted(files)] + [(d, True) for d in dirs]
                for name, is_dir in names:
                    path = os.path.join(top, name)
                    if name.startswith(".") or not self._accept(path, is_dir, root) or not _inside(path, root):
                        continue
                    rel = Path(path).relative_to(root).as_posix()
                    key = hashlib.sha256(f"{self.kind}\0{root}\0{rel}".encode()).hexdigest()[:16]
                    found[key] = Entry(key, rel, root, Path(path), _size(path, is_dir, self.kind))
                    if len(found) >= MAX_ENTRIES:
                        return found
                # An accepted folder (an index, a bundle, a DICOM slide) is one entry: not walked into.
                dirs[:] = [d for d in dirs if not self._accept(os.path.join(top, d), True, root)]
        return found

    def entries(self, *, refresh: bool = False) -> list[Entry]:
        """Every entry, walking the roots again when the last walk is older than 10 s."""
        with self._lock:
            now = time.monotonic()
            stale = now - self._scanned > (MIN_RESCAN_GAP_S if refresh else RESCAN_AFTER_S)
            if stale:
                self._entries = self._walk()
                self._by_path = {str(e.path): e for e in self._entries.values()}
                self._scanned = now
            return list(self._entries.values())

    def invalidate(self) -> None:
        """Walk the roots again at the next lookup: the server has just written an entry (an
        index, a bundle). Without this a name looked up within the rescan gap of the walk made
        when the call started is "not on this server" though it was just built."""
        with self._lock:
            self._scanned = -1e9

    # --- lookups ------------------------------------------------------------------------------

    def _find(self, key: str, check: Callable[[Entry], bool]) -> Entry | None:
        for refresh in (False, True):
            for entry in self.entries(refresh=refresh):
                if check(entry):
                    return entry
        return None

    def lookup(self, key: str) -> Entry:  # raises SlideNotFoundError or InputError (see _missing)
        """The entry with id or relative path ``key`` (exactly as listed), checked afresh."""
        if not isinstance(key, str) or not key or "\0" in key or len(key) > 4096:
            raise self._missing(str(key)[:200])
        entry = self._find(key, lambda e: key in (e.id, e.relpath))
        if entry is None or not self._still_valid(entry):
            raise self._missing(key)
        return entry

    def resolve(self, key: str) -> str:
        """The server path of the entry ``key`` names (see :meth:`lookup`)."""
        return os.path.realpath(self.lookup(key).path)

    def expand(self, key: str) -> list[Entry]:
        """One entry, or every entry under the listed folder ``key`` ("" for all of them)."""
        try:
            return [self.lookup(key)]
        except (InputError, SlideNotFoundError, UnknownModelError):
            prefix = key.rstrip("/") + "/" if key.strip("/") else ""
            under = [e for e in self.entries(refresh=True) if e.relpath.startswith(prefix) and self._still_valid(e)]
            if not under or "\0" in key:
                raise
            return sorted(under, key=lambda e: e.relpath)

    def public(self, server_path: str) -> str | None:
        """The id of the entry at ``server_path`` (a path the backend reports back), if any."""
        with self._lock:
            entry = self._by_path.get(server_path) or self._by_path.get(os.path.realpath(server_path))
        return entry.id if entry else None

    def _still_valid(self, entry: Entry) -> bool:
        path = str(entry.path)
        is_dir = os.path.isdir(path) if self.kind is EntryKind.SLIDE else self.kind is not EntryKind.CORPUS
        return (os.path.lexists(path) and _inside(path, entry.root)
                and self._accept(os.path.realpath(path), is_dir, entry.root))

    def _missing(self, key: str) -> Exception:
        """A slide not on the server is a SlideNotFoundError, a bundle an UnknownModelError, an
        index an InputError: the classes the local backend raises for files that are not there."""
        what = {"slide": "slide", "index": "cohort index", "bundle": "bundle", "corpus": "caption corpus"}[self.kind]
        listing = {"slide": "/v1/slides", "index": "/v1/indexes", "bundle": "/v1/capabilities",
                   "corpus": "/v1/corpora"}[self.kind]
        cause = f"no {what} of that id or name on this server (see {listing})"
        if self.kind is EntryKind.SLIDE:
            return SlideNotFoundError(key, cause)
        if self.kind is EntryKind.BUNDLE:  # as the local backend says of a bundle folder that is not there
            return UnknownModelError(f"{key}: {cause}")
        return InputError(f"{key}: {cause}")

    def new_path(self, name: str, field: str) -> str:
        """Where a new index or bundle called ``name`` goes: a plain folder name in the first root."""
        flag = "--indexes" if self.kind is EntryKind.INDEX else "--models"
        if not self.roots:
            raise InputError(f"{field}: this server has no {flag} folder to write in")
        if not isinstance(name, str) or not _NEW_NAME.fullmatch(name) or name.endswith((".", "..")):
            raise InputError(
                f"{field} {str(name)[:100]!r}: a new {self.kind} is named by a plain folder name "
                "(letters, digits, '.', '_', '-'), not a path"
            )
        path = self.roots[0] / name
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
            raise InputError(f"{field} {name!r}: exists on the server and is not a folder of that kind")
        if os.path.lexists(path) and not _contained(str(path), self.roots[0]):
            raise InputError(f"{field} {name!r}: holds links to files outside the server's {flag} folders; "
                             "the server writes only inside them")
        return str(path)
