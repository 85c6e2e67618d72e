"""The embedding cache never loses a good store and never waits forever: file locks on
filesystems without them, and which read failures delete a finished store (only proven damage,
under the key's lock)."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from backend.embed.cache import CacheKey, EmbeddingCache, EmbeddingCacheError, KeyLock, StoreHeader

KEY = CacheKey("fp0123", "test-tiny", "spec-a")


def _finished_store(cache: EmbeddingCache, key: CacheKey = KEY, n: int = 5, dim: int = 4) -> Path:
    header = StoreHeader(
        key=key,
        spec={"tile_size": 64, "mpp": 2.0},
        tile_extent=128.0,
        stride=128.0,
        origin=(0.0, 0.0),
        grid_shape=(1, n),
        slide_dimensions=(640, 128),
        slide_mpp=0.5,
        embed_dim=dim,
    )
    coords = np.stack([np.arange(n) * 128, np.zeros(n)], axis=1).astype(np.int64)
    store = cache.open_partial(header, coords, np.stack([np.zeros(n), np.arange(n)], axis=1))
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    store.append(vectors)
    return store.finalize()


@pytest.fixture
def cache(tmp_path: Path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path / "cache")


# --- KeyLock ------------------------------------------------------------------------------


def _flock_raising(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    import fcntl

    def flock(fd: int, op: int) -> None:
        raise OSError(code, errno.errorcode[code])

    monkeypatch.setattr(fcntl, "flock", flock)


def test_a_filesystem_without_locks_fails_with_the_fix(cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch) -> None:
    _flock_raising(monkeypatch, errno.ENOLCK)
    with pytest.raises(EmbeddingCacheError) as err:
        cache.try_lock(KEY)
    message = str(err.value)
    assert str(cache.lock_path(KEY).parent) in message and "HISTOCLIP_CACHE_DIR" in message and "ENOLCK" in message


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES])
def test_only_held_errnos_mean_held(cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    _flock_raising(monkeypatch, code)
    assert cache.try_lock(KEY) is None


def test_embedding_on_a_lockless_filesystem_raises_instead_of_waiting(
    cache: EmbeddingCache, cmu_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.embed import embed_slide
    from backend.models import load_model
    from backend.slides import TileSpec

    _flock_raising(monkeypatch, errno.ENOLCK)
    with pytest.raises(EmbeddingCacheError, match="HISTOCLIP_CACHE_DIR"):
        embed_slide(cmu_slide, load_model("test-tiny", device="cpu"), TileSpec(tile_size=64, mpp=2.0), cache=cache)


# --- load: what deletes a finished store --------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("no memory"),
        OSError(errno.EIO, "Input/output error"),
        ImportError("zarr 2"),
        RuntimeError("Event loop is closed"),  # not a codec's complaint about the bytes
    ],
)
def test_failures_that_say_nothing_about_the_store_keep_it(
    cache: EmbeddingCache, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    final = _finished_store(cache)

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(EmbeddingCache, "_read", fail)
    expected = EmbeddingCacheError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected):
        cache.load(KEY)
    assert (final / "zarr.json").is_file()
    monkeypatch.undo()
    assert cache.load(KEY) is not None


def test_a_store_from_a_newer_version_is_refused_and_kept(cache: EmbeddingCache) -> None:
    final = _finished_store(cache)
    meta = final / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(EmbeddingCacheError) as err:
        cache.load(KEY)
    assert str(final) in str(err.value)
    assert "version 99" in str(err.value) and "the 1 this" in str(err.value)
    assert meta.is_file()


def _damage(final: Path) -> None:
    for chunk in (p for p in (final / "vectors" / "c").rglob("*") if p.is_file()):
        chunk.write_bytes(b"garbage")


def test_a_damaged_store_is_removed_under_the_lock(cache: EmbeddingCache, caplog: pytest.LogCaptureFixture) -> None:
    final = _finished_store(cache)
    _damage(final)
    other = KeyLock.try_acquire(cache.lock_path(KEY))  # another job holds the key: it rebuilds
    assert other is not None
    with caplog.at_level(logging.WARNING):
        assert cache.load(KEY) is None
    assert final.is_dir() and "another job holds its lock" in caplog.text
    assert cache.load(KEY, lock=other) is None  # the holder may remove it
    assert not final.exists()
    other.release()


def test_a_damaged_store_is_removed_when_nobody_holds_the_lock(cache: EmbeddingCache) -> None:
    final = _finished_store(cache)
    _damage(final)
    assert cache.load(KEY) is None
    assert not final.exists()
    assert cache.try_lock(KEY) is not None  # and the lock was given back
