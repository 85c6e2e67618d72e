"""Content fingerprints of slide files, used as cache keys instead of paths.

A moved or renamed slide keeps its fingerprint; a changed one gets a new one. Files up to
``FULL_HASH_LIMIT`` bytes are hashed whole. Larger files (slides run to gigabytes) are hashed
by size plus the first and last MiB and evenly spaced 64 KiB blocks: a scanner rewriting a
file changes its size, header or tile tables, which this catches; an edit that keeps the size
and touches only unsampled bytes is not caught (the price of reading ~3 MiB, not gigabytes).
"""

from __future__ import annotations

import configparser
import hashlib
from pathlib import Path

from backend.errors import SlideNotFoundError, SlideReadError

FULL_HASH_LIMIT = 16 * 2**20
_EDGE = 2**20
_BLOCK = 64 * 2**10
_N_BLOCKS = 16
_VERSION = b"histoclip-slide-fingerprint-v1"


def slide_fingerprint(path: str | Path, *, full_hash_limit: int = FULL_HASH_LIMIT) -> str:
    """A 32-hex-digit content hash of a slide file and its companion files.

    Parameters
    ----------
    path
        The slide file, or a DICOM WSI folder (its ``.dcm`` files are hashed). For folder formats
        (MRXS, VMS/VMU) the companion data files are hashed too, by their names relative to the
        slide and their contents.
    full_hash_limit
        Files of at most this many bytes are hashed whole; larger ones are sampled.

    Returns
    -------
    str
        Hex digest; independent of the file's name and location.

    Raises
    ------
    SlideNotFoundError
        ``path`` does not exist.
    SlideReadError
        A file could not be read.
    """
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(path, "no such file")
    digest = hashlib.sha256(_VERSION)
    try:
        members = _dicom_members(path)
        if members is not None:  # a DICOM WSI (folder, or one series of one): its files, by name and content
            for member in members:
                digest.update(member.name.encode())
                _hash_file(digest, member, full_hash_limit)
            return digest.hexdigest()[:32]
        _hash_file(digest, path, full_hash_limit)
        for companion in _companions(path):
            digest.update(str(companion.relative_to(path.parent)).encode())
            _hash_file(digest, companion, full_hash_limit)
    except OSError as e:
        raise SlideReadError(path, f"cannot read the file to fingerprint it: {e}") from e
    return digest.hexdigest()[:32]


def _dicom_members(path: Path) -> list[Path] | None:
    """The ``.dcm`` files of a DICOM slide: a folder's, or the own series of a ``.dcm`` file that
    stands for it (see ``backend.slides.dicom.own_series_files``); None for other slides."""
    from backend.slides.dicom import dicom_files, own_series_files

    if path.is_dir():
        return dicom_files(path)
    if path.suffix.lower() == ".dcm":
        return own_series_files(path)
    return None


def _hash_file(digest: hashlib._Hash, path: Path, full_hash_limit: int) -> None:
    size = path.stat().st_size
    digest.update(size.to_bytes(8, "little"))
    with path.open("rb") as f:
        if size <= full_hash_limit:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
            return
        offsets = [0, max(size - _EDGE, 0)]
        offsets += [(size * (i + 1)) // (_N_BLOCKS + 1) for i in range(_N_BLOCKS)]
        for offset in sorted(offsets):
            f.seek(offset)
            digest.update(f.read(_EDGE if offset in offsets[:2] else _BLOCK))


def _companions(path: Path) -> list[Path]:
    """Data files that belong to a folder-format slide, in a stable order."""
    suffix = path.suffix.lower()
    if suffix == ".mrxs":
        folder = path.with_suffix("")
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.is_file())
    if suffix in (".vms", ".vmu"):
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            return []
        names = {
            value.strip()
            for section in parser.sections()
            for key, value in parser.items(section)
            if key.startswith(("imagefile", "mapfile", "optimisationfile"))
        }
        return sorted(p for p in (path.parent / n for n in names if n) if p.is_file())
    return []


def companion_files(path: str | Path) -> list[Path]:
    """The data files a folder-format slide file (MIRAX, VMS/VMU) reads besides itself."""
    return _companions(Path(path))


def slide_identity(path: str | Path) -> str:
    """A cheap 32-hex-digit token of a slide's files as they are now: path, size, mtime, inode.

    Reads no file content (only ``stat``), so it suits names that must be unique per version
    of a file within one process, such as dask array names, where the content hash of
    :func:`slide_fingerprint` (~3 MiB read per file) would be wasted work. It changes when
    the file is rewritten or moved; it is no cache key across machines.
    """
    path = Path(path).resolve()
    digest = hashlib.sha256(b"histoclip-slide-identity-v1")
    digest.update(str(path).encode())
    members = _dicom_members(path)
    if members is None:
        members = [path, *_companions(path)]
    for member in members:
        try:
            st = member.stat()
        except OSError:
            continue
        digest.update(f"{member.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
    return digest.hexdigest()[:32]
