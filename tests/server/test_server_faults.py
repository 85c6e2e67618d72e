"""Faults: a server killed (SIGKILL) mid-embedding and restarted, and a client whose event
stream is cut mid-job (a real TCP proxy between them drops every connection)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend import api
from backend.local import LocalBackend
from backend.remote import HttpBackend, JobInterruptedError
from tests.support.server import running_server

ROOT = Path(__file__).resolve().parents[2]
FINE = api.TileOptions(tile_size=32, mpp=1.0)
BATCH = 8
pytestmark = pytest.mark.slow


class Proxy:
    """A TCP proxy to ``port`` on loopback whose connections can all be cut at once."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self.conns += [client, server]
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> None:
        with self._lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.drop()


def test_a_dropped_event_stream_reattaches(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    backend = LocalBackend(cache_dir=tmp_path / "cache", device="cpu", batch_size=BATCH, num_workers=1)
    with running_server(tmp_path, (slides_dir,), backend=backend) as running:
        proxy = Proxy(int(running.url.rsplit(":", 1)[1]))
        remote = HttpBackend(f"http://127.0.0.1:{proxy.port}", running.token, backoff_s=0.05)
        seen: list[api.Progress] = []
        dropped = threading.Event()

        def progress(p: api.Progress) -> None:
            seen.append(p)
            if p.done >= 2 * BATCH and not dropped.is_set():
                dropped.set()
                threading.Thread(target=proxy.drop).start()  # cut the stream under the client's feet

        result = remote.embed_slide(api.SlideRef(cmu_slide.name), "test-tiny", FINE, progress=progress)
        assert dropped.is_set() and proxy.accepted >= 3  # the call, the first stream, the reattached one(s)
        (job,) = running.state.jobs.jobs()
        sent = [e["data"]["done"] for e in job.events if e["event"] == "progress"]
        assert [p.done for p in seen] == sent  # every event once: nothing lost, nothing repeated
        assert result.n_tiles == seen[-1].total == seen[-1].done
        remote.close()
        proxy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def test_sigkill_mid_embedding_then_restart_resumes(tmp_path: Path, slides_dir: Path, cmu_slide: Path) -> None:
    from backend.server.auth import TokenStore

    state = tmp_path / "state"
    token = TokenStore(state / "tokens.json").add("alice")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HISTOCLIP_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "backend.cli", "serve", "--slides", str(slides_dir), "--state-dir", str(state),
           "--port", str(port), "--device", "cpu", "--batch-size", str(BATCH), "--log-level", "warning"]
    body = {"slide": {"path": cmu_slide.name}, "model": "test-tiny",
            "tiles": {"tile_size": FINE.tile_size, "mpp": FINE.mpp, "min_tissue": FINE.min_tissue}}
    headers = {"Authorization": f"Bearer {token}"}
    proc = _start(cmd, env, url)
    try:
        job_id = httpx.post(f"{url}/v1/calls/embed", json=body, headers=headers, timeout=30).json()["id"]
        deadline = time.monotonic() + 300
        while True:
            record = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if record["progress"]["done"] >= 4 * BATCH or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert record["state"] == "running" and record["progress"]["done"] < record["progress"]["total"]
        os.kill(proc.pid, signal.SIGKILL)  # the process this test started, by its pid
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = _start(cmd, env, url)
    try:
        remote = HttpBackend(url, token)
        (again,) = remote.jobs()
        assert again["id"] == job_id and again["state"] == "interrupted"
        with pytest.raises(JobInterruptedError, match="run it again: it resumes from the cache"):
            remote.wait_for_job(job_id)
        seen: list[api.Progress] = []
        result = remote.embed_slide(api.SlideRef(cmu_slide.name), "test-tiny", FINE, progress=seen.append)
        # The restarted server loads its model first (a "loading model" stage, total unknown),
        # then resumes the slide from the batches the killed one wrote.
        work = [p for p in seen if p.total > 0]
        assert seen[0].stage == "loading model test-tiny" and seen[0].total == 0, seen[:3]
        assert work[0].stage.startswith("resumed") and work[0].done >= 2 * BATCH, seen[:3]
        labels = ("tumor", "stroma", "fat")
        got = remote.zero_shot(api.ZeroShotRequest(api.SlideRef(cmu_slide.name), "test-tiny", labels, tiles=FINE))
        remote.close()
    finally:
        proc.terminate()
        proc.wait(30)
    with LocalBackend(cache_dir=tmp_path / "ref-cache", device="cpu", batch_size=BATCH) as local:
        ref = local.zero_shot(api.ZeroShotRequest(api.SlideRef(str(cmu_slide)), "test-tiny", labels, tiles=FINE))
    assert result.n_tiles == int((ref.class_map > 0).sum())
    assert np.array_equal(got.class_map, ref.class_map)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, rtol=0, atol=1e-6)
