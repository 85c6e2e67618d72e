"""``HttpBackend`` against a real server: the wire format, direct answers, and clear errors."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import InputError, SlideNotFoundError, UnknownModelError
from backend.remote import ApiVersionError, AuthError, HttpBackend, ServerUnreachableError, wire
from tests.support.server import TILES, Running, serve

ROOT = Path(__file__).resolve().parents[2]


def test_import_backend_remote_loads_no_model_code() -> None:
    code = ("import sys, backend.remote; bad = [m for m in ('torch', 'open_clip', 'transformers', 'faiss', 'fastapi', "
            "'backend.local', 'backend.models') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_request_and_result_survives_the_wire() -> None:
    geometry = api.GridGeometry((2, 3), (256.0, 256.0), (128.0, 128.0))
    box = api.Region.box(1, 2, 30, 40)
    values = [
        api.ZeroShotRequest(api.SlideRef("id1", 0.25), "test-tiny", ("a", "b"), (("x",), ()), ("a {}",), 0.3, box, TILES),
        api.CaptionRequest(api.SlideRef("id1"), (box, api.Region.polygon([(0, 0), (5, 0), (3, 4)])), "cap", "test-tiny"),
        api.SearchRequest("idx", "test-tiny", text="tumor", k=5),
        api.IndexRequest(("a", "b"), "idx", "test-tiny"),
        wire.EmbedRequest(api.SlideRef("id1"), "test-tiny"),
        api.ZeroShotResult(("a", "b"), np.arange(6, dtype=np.int32).reshape(2, 3),
                           np.full((2, 2, 3), np.nan, dtype=np.float32), geometry, True),
        api.HeatmapResult("q", np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), geometry, False),
        api.CaptionResult((api.Caption(("one", "two"), (-0.5, -1.25)),)),
        api.IndexInfo("idx", "m", 2, 10, (("s.svs", "no mpp"),)),
        api.SearchResult((api.SearchHit("s", "id", (1.0, 2.0, 3.0, 4.0), 0.9, 3),)),
    ]
    for value in values:
        body, media = wire.encode(value)
        has_arrays = any(isinstance(getattr(value, f), np.ndarray) for f in value.__dataclass_fields__)
        assert (media == wire.BUNDLE_TYPE) == has_arrays
        if has_arrays:
            assert b"[" not in body.split(b"\x93NUMPY")[0].split(b'"arrays"')[0][-5:]  # arrays are not JSON lists
        back = wire.decode(type(value), body, media)
        for f in value.__dataclass_fields__:
            a, b = getattr(value, f), getattr(back, f)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
            else:
                assert a == b, f
    assert wire.decode(api.ZeroShotRequest, *wire.encode(values[0])).region.kind is api.RegionKind.BOX


def test_bundles_refuse_pickles_and_giant_headers() -> None:
    good = wire.pack({"x": {"$array": "a0"}}, {"a0": np.zeros(3)})
    meta, arrays = wire.unpack(good)
    assert np.array_equal(arrays["a0"], np.zeros(3))
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    pickled = good.replace(good[good.index(b"\x93NUMPY"):], buf.getvalue())
    header_len = int.from_bytes(pickled[8:12], "little")
    import json

    header = json.loads(pickled[12 : 12 + header_len])
    header["arrays"]["a0"] = [0, len(buf.getvalue())]
    raw = json.dumps(header).encode()
    pickled = wire.MAGIC + len(raw).to_bytes(4, "little") + raw + buf.getvalue()
    with pytest.raises(InputError, match="not a plain .npy"):
        wire.unpack(pickled)
    huge = io.BytesIO()
    np.lib.format.write_array_header_2_0(huge, {"descr": "<f8", "fortran_order": False, "shape": (1,) * 3000})
    raw = json.dumps({"meta": None, "arrays": {"a0": [0, len(huge.getvalue()) + 8]}}).encode()
    with pytest.raises(InputError, match="not a plain .npy"):
        wire.unpack(wire.MAGIC + len(raw).to_bytes(4, "little") + raw + huge.getvalue() + b"\0" * 8)
    with pytest.raises(InputError, match="does not start"):
        wire.unpack(b"junk")
    with pytest.raises(InputError, match="outside the body"):
        raw = json.dumps({"meta": None, "arrays": {"a0": [0, 10**9]}}).encode()
        wire.unpack(wire.MAGIC + len(raw).to_bytes(4, "little") + raw)


@pytest.fixture(scope="module")
def remote(module_server: Running) -> HttpBackend:
    with HttpBackend(module_server.url, module_server.token) as client:
        yield client


@pytest.mark.slow
def test_remote_answers_equal_local_ones(remote: HttpBackend, module_server: Running, cmu_slide: Path, tmp_path: Path) -> None:
    from backend.local import LocalBackend

    assert isinstance(remote, api.Backend)
    local = LocalBackend(cache_dir=tmp_path / "local-cache", device="cpu")
    assert [m.name for m in remote.list_models()] == [m.name for m in local.list_models()]
    slides = {s["name"]: s["id"] for s in remote.slides()}
    sid = slides[cmu_slide.name]
    request = api.ZeroShotRequest(api.SlideRef(sid), "test-tiny", ("tumor", "stroma", "fat"), tiles=TILES)
    far = remote.zero_shot(request)  # not yet embedded on the server: embeds, then answers
    near = local.zero_shot(api.ZeroShotRequest(api.SlideRef(str(cmu_slide)), "test-tiny", ("tumor", "stroma", "fat"), tiles=TILES))
    assert far.labels == near.labels and far.geometry == near.geometry and far.random_weights
    assert np.array_equal(far.class_map, near.class_map) and far.class_map.dtype == np.int32
    assert np.array_equal(far.probabilities, near.probabilities, equal_nan=True)
    by_name = api.ZeroShotRequest(api.SlideRef(cmu_slide.name), "test-tiny", ("tumor", "stroma"), tiles=TILES)
    assert remote.zero_shot(by_name).class_map.shape == far.class_map.shape  # the listed name works as well
    hm = remote.heatmap(api.HeatmapRequest(api.SlideRef(sid), "test-tiny", "tumour cells", tiles=TILES))
    local_hm = local.heatmap(api.HeatmapRequest(api.SlideRef(str(cmu_slide)), "test-tiny", "tumour cells", tiles=TILES))
    assert np.array_equal(hm.similarity, local_hm.similarity, equal_nan=True)
    info = remote.slide_info(sid)
    assert info["levels"][0] == [2220, 2967] and abs(info["mpp"] - 0.499) < 1e-3 and "/" not in info["name"]


def test_clear_errors(remote: HttpBackend, module_server: Running) -> None:
    with pytest.raises(SlideNotFoundError, match="not-here.svs: no slide of that id or name on this server"):
        remote.zero_shot(api.ZeroShotRequest(api.SlideRef("not-here.svs"), "test-tiny", ("a", "b"), tiles=TILES))
    with pytest.raises(UnknownModelError, match="no-such-model.*test-tiny"):
        remote.zero_shot(api.ZeroShotRequest(api.SlideRef("CMU-1-Small-Region.svs"), "no-such-model", ("a", "b")))
    with pytest.raises(InputError, match="no-index: no cohort index of that id or name on this server"):
        remote.search(api.SearchRequest("no-index", "test-tiny", text="tumor"))
    with HttpBackend(module_server.url, "wrong-token") as bad:
        with pytest.raises(AuthError, match="refused the token"):
            bad.list_models()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with HttpBackend(f"http://127.0.0.1:{port}", "t", retries=1, backoff_s=0.01) as down:
        with pytest.raises(ServerUnreachableError, match=f"cannot reach the histoclip server at http://127.0.0.1:{port}"):
            down.list_models()
    assert "token" not in repr(remote).lower()


def _toy_app(health: dict, answers: list[int]):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    hits = []

    @app.get("/v1/health")
    def _health():
        return health

    @app.get("/v1/models")
    def _models():
        hits.append(1)
        status = answers[len(hits) - 1] if len(hits) <= len(answers) else 200
        if status != 200:
            return JSONResponse({"error": {"type": "LimitError", "message": "busy"}}, status_code=status,
                                headers={"Retry-After": "0"})
        return []

    app.state.hits = hits
    return app


def test_version_mismatch_and_retries_on_busy_servers() -> None:
    app = _toy_app({"status": "ok", "api_version": "2.0"}, [])
    with serve(app) as url, HttpBackend(url, "t") as client:
        with pytest.raises(ApiVersionError, match="server speaks API 2.0, this client 1.0"):
            client.list_models()
    app = _toy_app({"status": "ok", "api_version": wire.API_VERSION}, [429, 503, 429])
    with serve(app) as url, HttpBackend(url, "t", retries=4, backoff_s=0.01) as client:
        assert client.list_models() == [] and len(app.state.hits) == 4
    app = _toy_app({"status": "ok", "api_version": wire.API_VERSION}, [429] * 10)
    with serve(app) as url, HttpBackend(url, "t", retries=2, backoff_s=0.01) as client:
        from backend.remote import LimitError

        with pytest.raises(LimitError, match="busy"):
            client.list_models()
        assert len(app.state.hits) == 3


def test_many_threads_share_one_client(remote: HttpBackend, cmu_slide: Path) -> None:
    request = api.HeatmapRequest(api.SlideRef(cmu_slide.name), "test-tiny", "stroma", tiles=TILES)
    first = remote.heatmap(request).similarity
    results, errors = [], []

    def go() -> None:
        try:
            results.append(remote.heatmap(request).similarity)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 6 and all(np.array_equal(r, first, equal_nan=True) for r in results)
