"""The dock's backend picker through the plugin path, against real uvicorn servers on 127.0.0.1:
connection errors said clearly, the token never echoed and kept private, a device change that
keeps the server, a server slide streamed into the viewer and worked on by the server, and a
reopened dock that reconnects by itself."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.support import server as server_fixtures  # running_server: a real server in a thread (no HTTP mocks)

pytestmark = [pytest.mark.gui, pytest.mark.slow]
WAIT_MS = 300_000


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(qtbot, dock, url: str, token: str) -> str:
    picker = dock.backend_picker
    picker.where.value = "a server"
    picker.url.value, picker.token.value = url, token
    picker.connect_button.native.click()
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=WAIT_MS)
    return str(picker.state.value)


def test_picker_connects_keeps_the_server_and_streams_its_slides(
    plugin_dock, plugin_viewer, qtbot, notes, tmp_path: Path, slides_dir: Path, cmu_slide: Path, _isolated_config: Path
) -> None:
    from fastapi import FastAPI

    from backend.remote import HttpBackend
    from backend.server.threaded import serve_in_thread
    from backend.slides import open_slide

    dock = plugin_dock
    picker = dock.backend_picker
    assert picker.where.value == "this computer" and not picker.url.visible
    from qtpy.QtWidgets import QLineEdit

    assert picker.token.native.echoMode() == QLineEdit.EchoMode.Password

    # Nobody listening; a web server that is not histoclip's API 1.x; a wrong token.
    state = _connect(qtbot, dock, f"http://127.0.0.1:{_closed_port()}", "whatever")
    assert state.startswith("not connected: cannot reach the histoclip server"), state
    future = FastAPI()
    future.get("/v1/health")(lambda: {"status": "ok", "api_version": "2.0"})
    with serve_in_thread(future) as other:
        state = _connect(qtbot, dock, other, "whatever")
    assert "server speaks API 2.0, this client 1.0" in state, state
    with server_fixtures.running_server(tmp_path, (slides_dir,)) as running:
        import httpx

        # The server's first capabilities import torch there (seconds, a minute on a loaded machine): not the picker's wait.
        assert httpx.get(f"{running.url}/v1/capabilities", headers=running.headers(), timeout=600).status_code == 200
        running.state.backend.model("test-tiny")  # and its model load, likewise
        state = _connect(qtbot, dock, running.url, "wrong-token")
        assert "refused the token (401)" in state and "wrong-token" not in state, state
        assert len(notes.errors) == 3 and not isinstance(dock.backend, HttpBackend)  # still this computer

        state = _connect(qtbot, dock, running.url, running.token)
        assert state.startswith(f"connected to {running.url} (API 1.0, device cpu"), state
        assert isinstance(dock.backend, HttpBackend) and dock.backend.url == running.url
        assert picker.token.value == "" and not dock.device.enabled
        tokens = _isolated_config / "server-tokens.json"
        assert json.loads(tokens.read_text()) == {running.url: running.token}
        assert oct(os.stat(tokens).st_mode)[-3:] == "600"
        assert running.token not in (_isolated_config / "backend.json").read_text()
        assert "test-tiny" in [c for c in dock.model.choices]

        dock.device.value = "cpu"  # a device change never makes the dock local
        assert isinstance(dock.backend, HttpBackend) and dock.backend.url == running.url

        # A server slide opens streamed from the server and tasks name it by its server id.
        picker.server_slide.value = next(s["id"] for s in picker._slides if s["name"] == cmu_slide.name)
        picker.open_button.native.click()
        qtbot.waitUntil(lambda: len(plugin_viewer.layers) == 1, timeout=WAIT_MS)
        layer = plugin_viewer.layers[0]
        assert layer.metadata["histoclip"]["path"] == picker.server_slide.value and layer.multiscale
        with open_slide(cmu_slide) as local:
            assert np.array_equal(np.asarray(layer.data[0][700:900, 1000:1300]),
                                  local.read_region((1000, 700), 0, (300, 200)))
            assert tuple(layer.scale) == (local.mpp, local.mpp)
        dock.model.value = "test-tiny"
        dock.zero_shot.query.value = "stroma"
        dock.zero_shot.heatmap_button.native.click()
        qtbot.waitUntil(lambda: not dock.runner.busy, timeout=WAIT_MS)
        assert not notes.errors[3:], notes.errors
        assert len(plugin_viewer.layers) == 2 and plugin_viewer.layers[1].metadata["histoclip"]["path"] == layer.metadata["histoclip"]["path"]
        assert [j.slide for j in running.state.jobs.jobs()] == [picker.server_slide.value]  # the server did it

        # A new dock comes back connected to the remembered server with the remembered token.
        _, again = plugin_viewer.window.add_plugin_dock_widget("napari-histoclip", "HistoCLIP")
        assert again.backend_picker.where.value == "a server" and again.backend_picker.url.value == running.url
        qtbot.waitUntil(lambda: again.backend_picker.connected == running.url, timeout=WAIT_MS)
        assert isinstance(again.backend, HttpBackend) and again.backend_picker.token.value == ""

        # Back to this computer: local again, and remembered so.
        picker.where.value = "this computer"
        assert not isinstance(dock.backend, HttpBackend) and dock.device.enabled
