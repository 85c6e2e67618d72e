"""Building pint's unit registry from two threads at once: the dock's warm-up and a slide being
read in the task runner both call ``warm_units`` when a slide is opened as the dock opens."""

from __future__ import annotations

import subprocess
import sys

#: Run in a fresh interpreter: pint builds its application registry once per process.
TWO_THREADS = """
import threading
from napari_histoclip._open import warm_units

errors = []

def warm():
    try:
        warm_units()
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=warm) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors)
"""


def test_warm_units_from_two_threads_at_once() -> None:
    out = subprocess.run([sys.executable, "-c", TWO_THREADS], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
