"""Issue 9's quit test: a whole session in a subprocess (``quit_session.py``) exits 0, with no
error notification and no traceback on stderr, after each tab's action, an idle wait past Qt's
30 s thread expiry (sqlite connections bound to a retired thread broke search and aborted napari
on quit) and a search again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]
IDLE_S = 32  # past QThreadPool's 30 s expiry: the one slow wait of the suite


def test_a_session_quits_cleanly_after_an_idle_search(cmu_slide, tiny_captioner, tmp_path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "QT_API": "pyqt6",
        "HISTOCLIP_CONFIG_DIR": str(tmp_path / "config"),
        "HISTOCLIP_CACHE_DIR": str(tmp_path / "cache"),
    }
    script = Path(__file__).with_name("quit_session.py")
    run = subprocess.run(
        [sys.executable, str(script), str(cmu_slide), str(tiny_captioner), str(tmp_path), str(IDLE_S)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"exit code {run.returncode}\n{out[-4000:]}"
    assert "step dock closed" in run.stdout, out[-4000:]
    assert "PROBLEM" not in run.stdout, out[-4000:]
    assert "Traceback" not in run.stderr, run.stderr[-4000:]
