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
        The slide file. For folder formats (MRXS, VMS/VMU) the companion data files are
        hashed too, by their names relative to the slide and their contents.
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
        _hash_file(digest, path, full_hash_limit)
        for companion in _companions(path):
            digest.update(str(companion.relative_to(path.parent)).encode())
            _hash_file(digest, companion, full_hash_limit)
    except OSError as e:
        raise SlideReadError(path, f"cannot read the file to fingerprint it: {e}") from e
    return digest.hexdigest()[:32]


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
