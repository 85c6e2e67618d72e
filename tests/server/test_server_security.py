"""The server's defences over real HTTP: tokens on every route, paths that never leave a root,
body and region limits, and no listening beyond loopback without tokens."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.server.config import check_bind, is_loopback
from tests.support.server import Running, running_server

OUTSIDE_SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"


def _routes(app) -> list[tuple[str, str]]:
    """Every route: the app's own (the schema and docs) and its routers' (FastAPI lists an
    included router as one entry of ``app.routes``, so those come from the OpenAPI schema)."""
    pairs = [(method, route.path) for route in app.routes for method in sorted(getattr(route, "methods", None) or ())]
    pairs += [(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops]
    out = []
    for method, path in pairs:
        if method in ("HEAD", "OPTIONS"):
            continue
        path = re.sub(r"\{route\}", "zero-shot", path)
        out.append((method, re.sub(r"\{[a-z_]+\}", "0123456789abcdef", path)))
    return out


def test_every_route_but_health_needs_a_token(module_server: Running) -> None:
    routes = _routes(module_server.app)
    assert ("GET", "/v1/metrics") in routes and ("POST", "/v1/calls/zero-shot") in routes
    assert ("GET", "/v1/openapi.json") in routes and len(routes) >= 14
    with httpx.Client(base_url=module_server.url) as http:
        for method, path in routes + [("GET", "/v1/no-such-route"), ("GET", "/")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWxpY2U6eA=="},
                            {"Authorization": f"Bearer {module_server.token}x"}):
                r = http.request(method, path, headers=headers, content=b"{}" if method == "POST" else None)
                if path == "/v1/health":
                    assert r.status_code == 200, (method, path)
                    continue
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert r.json()["error"]["type"] == "AuthError"
        # With the token the same routes answer (the dummy ids are simply not found).
        good = http.get("/v1/slides", headers=module_server.headers())
        assert good.status_code == 200 and {s["name"] for s in good.json()} >= {"CMU-1-Small-Region.svs"}
        assert http.get("/v1/openapi.json", headers=module_server.headers()).json()["info"]["title"] == "histoclip"
        job = http.get("/v1/jobs/0123456789abcdef", headers=module_server.headers())
        assert job.status_code == 404


def test_token_file_holds_only_hashes(module_server: Running) -> None:
    text = (module_server.state_dir / "tokens.json").read_text()
    assert module_server.token not in text and json.loads(text)["tokens"][0]["name"] == "alice"
    assert oct(os.stat(module_server.state_dir / "tokens.json").st_mode)[-3:] == "600"


@pytest.fixture(scope="module")
def attack_server(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path):
    """A root holding one real slide, a symlinked slide out of the root and a secret file beside it."""
    tmp = tmp_path_factory.mktemp("attack")
    root, outside = tmp / "root", tmp / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(cmu_slide, root / "sub" / "good.svs")
    (outside / "secret.svs").write_bytes(OUTSIDE_SECRET)
    (outside / "secret.txt").write_bytes(OUTSIDE_SECRET)
    (root / "link-out.svs").symlink_to(outside / "secret.svs")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "notes.txt").write_text("not a slide")
    with running_server(tmp, (root,)) as running:
        yield running, root, outside


ATTACKS = [
    "../outside/secret.svs", "sub/../../outside/secret.svs", "%2e%2e/outside/secret.svs", "..%2fOUTSIDE",
    "%252e%252e%252foutside%252fsecret.svs", "/etc/passwd", "{outside}/secret.svs", "link-out.svs",
    "linkdir/secret.svs", "linkdir/secret.txt", "notes.txt", "sub/good.svs\x00.txt", "sub/good.svs\x00",
    "\uff0e\uff0e/outside/secret.svs", "sub/good.svs/", "sub\\..\\..\\outside\\secret.svs", "SUB/GOOD.SVS",
    "sub//good.svs", "~/secret.svs", "sub/good.svs\u200b", "file:///etc/passwd",
]


def test_path_attacks_read_nothing_outside_the_root(attack_server) -> None:
    running, root, outside = attack_server
    listing = httpx.get(f"{running.url}/v1/slides", headers=running.headers()).json()
    assert [s["name"] for s in listing] == ["sub/good.svs"]  # no link out of the root, no .txt
    good = listing[0]["id"]
    from urllib.parse import quote

    with httpx.Client(base_url=running.url, headers=running.headers(), timeout=30) as http:
        ok = http.get(f"/v1/slides/{good}")
        assert ok.status_code == 200 and ok.json()["levels"][0] == [2220, 2967]
        assert http.get("/v1/slides/sub%2Fgood.svs").status_code == 200  # the listed name works too
        for raw in ATTACKS:
            attack = raw.format(outside=outside)
            body = {"slide": {"path": attack}, "model": "test-tiny", "labels": ["a", "b"]}
            r = http.post("/v1/calls/zero-shot", json=body)
            assert r.status_code == 404, (attack, r.status_code, r.text)
            assert r.json()["error"]["type"] == "SlideNotFoundError" and str(outside) not in r.text
            for quoted in (quote(attack, safe=""), quote(attack, safe="/")):
                r = http.get(f"/v1/slides/{quoted}")
                assert r.status_code == 404, (attack, quoted, r.status_code)
                assert OUTSIDE_SECRET.decode() not in r.text
            # Index and bundle names are looked up the same way.
            r = http.post("/v1/calls/search", json={"index_path": attack, "model": "test-tiny", "text": "x"})
            assert r.status_code == 422 and "no cohort index of that id" in r.text, (attack, r.text)
        # A new index may only be a plain name inside the index root.
        for bad in ("../evil", "/tmp/evil", "a/b", ".hidden", "x\x00y", ".."):
            r = http.post("/v1/calls/index", json={"slides": [good], "index_path": bad, "model": "test-tiny"})
            assert r.status_code == 422 and "plain folder name" in r.json()["error"]["message"], (bad, r.text)
        assert not (root.parent / "evil").exists() and not Path("/tmp/evil").exists()
        # A model or captioner named by a server path is refused before anything loads.
        r = http.post("/v1/calls/zero-shot", json={"slide": {"path": good}, "model": str(outside), "labels": ["a", "b"]})
        assert r.status_code == 404 and "not on this server" in r.json()["error"]["message"]
        r = http.post("/v1/calls/caption", json={"slide": {"path": good}, "model": "test-tiny", "captioner": str(outside),
                                                 "regions": [{"kind": "box", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]}]})
        assert r.status_code == 404 and "no bundle of that id" in r.text, r.text


def test_a_link_swapped_after_listing_is_refused(attack_server, tmp_path: Path) -> None:
    running, root, outside = attack_server
    listing = httpx.get(f"{running.url}/v1/slides", headers=running.headers()).json()
    target = root / "sub" / "swap.svs"
    shutil.copy(root / "sub" / "good.svs", target)
    try:
        time.sleep(1.1)  # the catalog walks again at most once a second
        running.state.slides.entries(refresh=True)
        entry = next(e for e in running.state.slides.entries() if e.relpath == "sub/swap.svs")
        target.unlink()
        target.symlink_to(outside / "secret.svs")  # swapped under the server's feet
        r = httpx.get(f"{running.url}/v1/slides/{entry.id}", headers=running.headers())
        assert r.status_code == 404 and OUTSIDE_SECRET.decode() not in r.text
    finally:
        target.unlink(missing_ok=True)
    assert listing


def test_body_and_region_limits(tmp_path: Path, slides_dir: Path) -> None:
    from backend.server import Limits

    limits = Limits(max_body_bytes=4096, max_regions=3, max_region_pixels=1000 * 1000)
    with running_server(tmp_path, (slides_dir,), limits=limits) as running:
        with httpx.Client(base_url=running.url, headers=running.headers()) as http:
            r = http.post("/v1/calls/zero-shot", content=b"{" + b" " * 5000 + b"}",
                          headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and "4096" in r.json()["error"]["message"]

            def chunks():  # no Content-Length: counted as it arrives
                for _ in range(10):
                    yield b" " * 1000

            r = http.post("/v1/calls/zero-shot", content=chunks(), headers={"Content-Type": "application/json"})
            assert r.status_code == 413
            box = {"kind": "box", "points": [[0, 0], [10, 0], [10, 10], [0, 10]]}
            body = {"slide": {"path": "CMU-1-Small-Region.svs"}, "regions": [box] * 4, "captioner": "x", "model": "test-tiny"}
            r = http.post("/v1/calls/caption", json=body)
            assert r.status_code == 422 and "at most 3" in r.json()["error"]["message"]
            big = {"kind": "box", "points": [[0, 0], [2000, 0], [2000, 2000], [0, 2000]]}
            body = {"slide": {"path": "CMU-1-Small-Region.svs"}, "model": "test-tiny", "labels": ["a", "b"], "region": big}
            r = http.post("/v1/calls/zero-shot", json=body)
            assert r.status_code == 422 and "region 0" in r.json()["error"]["message"]
            r = http.post("/v1/calls/zero-shot", json={"slide": {"path": "x"}, "model": "test-tiny", "labels": "ab"})
            assert r.status_code == 422 and "zero-shot.labels" in r.json()["error"]["message"]
            r = http.post("/v1/calls/zero-shot", json={"slide": {"path": "x"}, "model": "m", "labels": [], "extra": 1})
            assert r.status_code == 422 and "unknown field 'extra'" in r.json()["error"]["message"]


def test_no_listening_beyond_loopback_without_tokens(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    from backend.errors import InputError

    with pytest.raises(InputError, match="without tokens"):
        check_bind("0.0.0.0", n_tokens=0, insecure=False)
    check_bind("0.0.0.0", n_tokens=1, insecure=False)
    check_bind("0.0.0.0", n_tokens=0, insecure=True)
    check_bind("127.0.0.1", n_tokens=0, insecure=False)
    # The command refuses before it binds anything.
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1 and "without tokens" in done.stderr and "--insecure" in done.stderr
