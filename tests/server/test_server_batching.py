"""Cross-client batching: single items from concurrent requests share model calls, and each
caller still gets its own row."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend.errors import InputError
from backend.remote import HttpBackend
from backend.server.batching import Batcher
from tests.support.server import running_server


def _concurrently(n: int, fn) -> list:
    out: list = [None] * n
    barrier = threading.Barrier(n)

    def go(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_batcher_groups_items_and_returns_each_its_own() -> None:
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.02)
        return [2 * x for x in items]

    batcher = Batcher(double, max_batch=8, max_wait_ms=100)
    results = _concurrently(16, lambda i: batcher.submit(i).result(10))
    assert results == [2 * i for i in range(16)]
    assert sum(sizes) == 16 and len(sizes) < 16 and max(sizes) <= 8
    assert batcher.batches == len(sizes) and batcher.items == 16
    batcher.close()
    single = Batcher(double, max_batch=1, max_wait_ms=100)
    sizes.clear()
    assert _concurrently(6, lambda i: single.submit(i).result(10)) == [2 * i for i in range(6)]
    assert sizes == [1] * 6
    single.close()

    def broken(items: list[int]) -> list[int]:
        raise InputError(f"bad batch of {len(items)}")

    failing = Batcher(broken, max_batch=4, max_wait_ms=50)
    futures = [failing.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(InputError, match="bad batch"):
            f.result(10)
    failing.close()
    with pytest.raises(InputError, match="max_batch"):
        Batcher(double, max_batch=0)


@pytest.mark.slow
def test_encoding_over_http_batches_concurrent_clients(tmp_path: Path, slides_dir: Path, testdata: Path) -> None:
    from PIL import Image

    from backend.local import LocalBackend

    tile = np.asarray(Image.open(testdata / "tiles" / "kather1.tif").convert("RGB"))
    local = LocalBackend(cache_dir=tmp_path / "local", device="cpu")
    clip = local.model("test-tiny")
    want_image = np.asarray(clip.encode_images(tile[None]).cpu())[0]
    texts = [f"tumor type {i}" for i in range(8)]
    want_text = np.asarray(clip.encode_text(texts).cpu())
    with running_server(tmp_path, (slides_dir,), batch_max=8, batch_wait_ms=200) as running:
        remote = HttpBackend(running.url, running.token)
        got = remote.encode_images("test-tiny", tile)
        assert got.shape == (1, clip.embed_dim) and got.dtype == np.float32
        np.testing.assert_allclose(got[0], want_image, atol=1e-5)
        tiles = _concurrently(8, lambda i: remote.encode_images("test-tiny", np.roll(tile, 10 * i, axis=0)))
        for i, vec in enumerate(tiles):
            alone = np.asarray(clip.encode_images(np.roll(tile, 10 * i, axis=0)[None]).cpu())[0]
            np.testing.assert_allclose(vec[0], alone, atol=1e-5)
        vectors = _concurrently(8, lambda i: remote.encode_texts("test-tiny", [texts[i]]))
        np.testing.assert_allclose(np.concatenate(vectors), want_text, atol=1e-5)
        metrics = httpx.get(f"{running.url}/v1/metrics", headers=running.headers()).text
        batches = int(re.search(r'histoclip_encode_batches_total\{kind="image",model="test-tiny"\} (\d+)', metrics)[1])
        items = int(re.search(r'histoclip_encode_items_total\{kind="image",model="test-tiny"\} (\d+)', metrics)[1])
        assert items == 9 and batches < items, metrics
        with pytest.raises(InputError, match=r"expected uint8 \(B, H, W, 3\) RGB, got float32"):
            remote.encode_images("test-tiny", tile.astype(np.float32))
        with pytest.raises(InputError, match="crops of 4 x 4 pixels"):
            remote.encode_images("test-tiny", tile[:4, :4])
        remote.close()
