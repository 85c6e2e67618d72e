"""The sample slide used by ``histoclip demo`` and the plugin's sample data.

OpenSlide's CMU-1-Small-Region (Aperio SVS, 2220 x 2967 px, 1.9 MB), downloaded once into the
cache and checked against its published SHA-256. Offline, a clear error says how to use a
slide on disk instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backend.errors import HistoclipError
from backend.paths import cache_root


@dataclass(frozen=True)
class SampleFile:
    name: str
    url: str
    sha256: str


CMU_SMALL_REGION = SampleFile(
    name="CMU-1-Small-Region.svs",
    url="https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs",
    sha256="ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
)


class DownloadError(HistoclipError):
    """A sample file could not be fetched or failed its checksum."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_slide(
    sample: SampleFile = CMU_SMALL_REGION,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Path of the sample slide, downloading it into ``<cache>/samples`` the first time.

    Raises
    ------
    DownloadError
        When the download fails (offline, server unreachable) or the file's checksum differs;
        nothing partial is left in the cache.
    """
    dest = cache_root(cache_dir) / "samples" / sample.name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the destination, check, then rename: a cut download leaves no file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{sample.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(sample.url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
        digest = _sha256(tmp)
        if digest != sample.sha256:
            raise DownloadError(
                f"{sample.name}: downloaded file from {sample.url} has SHA-256 {digest}, "
                f"expected {sample.sha256}; not kept"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"{sample.name}: could not download it from {sample.url} ({reason}). "
            "Offline? Use a slide on disk instead (histoclip demo --slide PATH)."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest
