"""Load: 32 concurrent clients (a token each) mixing zero-shot, search and caption against one
server, for a bounded number of requests: no error, every answer equal to the local one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.local import LocalBackend
from backend.remote import HttpBackend
from backend.server.auth import TokenStore
from tests.support.server import TILES, running_server

CLIENTS = 32
ROUNDS = 2  # each client sends ROUNDS x (zero-shot, search, caption)
SLIDES = ("CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi")


def _index_readers_work_from_any_thread(tmp: Path) -> bool:
    """Whether a cohort index opened on one thread can be searched from another (a backend
    bug fixed on main by "Backend from any thread: CohortIndex and its SQLite store ...")."""
    from backend.index import CohortIndex

    CohortIndex.open_or_create(tmp / "probe", model_id="m", dim=4).close()
    index = CohortIndex.open(tmp / "probe", read_only=True)
    ok: list[bool] = []

    def query() -> None:
        try:
            index.search(np.ones(4, dtype=np.float32), 1, model_id="m")
            ok.append(True)
        except Exception:  # noqa: BLE001 - the probe's answer
            ok.append(False)

    t = threading.Thread(target=query)
    t.start()
    t.join()
    return ok == [True]


@pytest.mark.slow
def test_32_clients_get_the_local_answers(tmp_path: Path, slides_dir: Path, tiny_captioner: Path) -> None:
    if not _index_readers_work_from_any_thread(tmp_path):
        pytest.skip("this branch's CohortIndex cannot be searched from two threads (fixed on main)")
    cmu = slides_dir / SLIDES[0]
    box = (api.Region.box(500, 500, 800, 800),)
    labels = ("tumor", "stroma", "fat")
    with LocalBackend(cache_dir=tmp_path / "local", device="cpu") as local:
        local.build_index(api.IndexRequest(tuple(str(slides_dir / s) for s in SLIDES), str(tmp_path / "ref-index"), "test-tiny", TILES))
        want_z = local.zero_shot(api.ZeroShotRequest(api.SlideRef(str(cmu)), "test-tiny", labels, tiles=TILES))
        want_s = local.search(api.SearchRequest(str(tmp_path / "ref-index"), "test-tiny", text="tumor cells", k=5))
        want_c = local.caption(api.CaptionRequest(api.SlideRef(str(cmu)), box, str(tiny_captioner), "test-tiny", tiles=TILES))
    store = TokenStore(tmp_path / "state" / "tokens.json")
    tokens = [store.add(f"client-{i}") for i in range(CLIENTS)]
    server_backend = LocalBackend(cache_dir=tmp_path / "server-cache", device="cpu")
    with running_server(tmp_path, (slides_dir,), backend=server_backend) as running:
        running.state.bundles.roots = (tiny_captioner.parent.resolve(),)
        warm = HttpBackend(running.url, running.token)
        warm.build_index(api.IndexRequest(SLIDES, "cohort", "test-tiny", TILES))  # embeds both slides too
        warm.close()
        latencies: list[float] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            remote = HttpBackend(running.url, tokens[i])
            calls = [
                ("zero-shot", lambda: remote.zero_shot(api.ZeroShotRequest(api.SlideRef(SLIDES[0]), "test-tiny", labels, tiles=TILES))),
                ("search", lambda: remote.search(api.SearchRequest("cohort", "test-tiny", text="tumor cells", k=5))),
                ("caption", lambda: remote.caption(api.CaptionRequest(api.SlideRef(SLIDES[0]), box, tiny_captioner.name, "test-tiny", tiles=TILES))),
            ]
            try:
                for r in range(ROUNDS):
                    for j in range(len(calls)):
                        name, call = calls[(i + j + r) % len(calls)]  # clients interleave the kinds
                        t0 = time.perf_counter()
                        got = call()
                        dt = time.perf_counter() - t0
                        if name == "zero-shot":
                            assert np.array_equal(got.class_map, want_z.class_map)
                            assert np.array_equal(got.probabilities, want_z.probabilities, equal_nan=True)
                        elif name == "search":
                            assert [(h.slide_name, h.box, h.score) for h in got.hits] == [(h.slide_name, h.box, h.score) for h in want_s.hits]
                        else:
                            assert got == want_c
                        with lock:
                            latencies.append(dt)
            except BaseException as e:  # noqa: BLE001 - collected, asserted below
                with lock:
                    failures.append(e)
            finally:
                remote.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - t0
    assert not failures, failures[:3]
    assert len(latencies) == CLIENTS * ROUNDS * 3
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"\nload: {CLIENTS} clients, {len(latencies)} requests in {wall:.1f} s: {len(latencies) / wall:.1f} req/s, "
          f"p50 {p50:.0f} ms, p99 {p99:.0f} ms (shared 2-core machine)")
