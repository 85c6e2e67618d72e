"""A user's session in one process, for ``test_quit.py``: napari opened, the dock added from the
Plugins menu, each tab's action run once, an idle wait past Qt's 30 s thread expiry, a search
again, the dock closed, napari quit. Prints ``PROBLEM ...`` lines for error and warning
notifications (but test-tiny's own "random weights" warning) and exits 0 only when there were none (a crash or abort on quit gives its own
nonzero code).

Usage: ``python quit_session.py SLIDE CAPTIONER WORKDIR IDLE_SECONDS``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    slide, captioner, workdir, idle = Path(argv[0]), argv[1], Path(argv[2]), float(argv[3])
    import napari
    import numpy as np
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication

    problems: list[str] = []

    def take(n) -> None:  # noqa: ANN001
        # test-tiny's "random weights" warning is expected: it says its scores mean nothing
        expected = str(n.message).startswith("model test-tiny: random weights")
        if str(n.severity) not in ("info", "none") and not expected:
            problems.append(f"{n.severity}: {n.message}")

    notification_manager.notification_ready.connect(take)

    def wait_until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            QApplication.processEvents()
            time.sleep(0.01)

    viewer = napari.Viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-histoclip", "HistoCLIP")
    dock.model.value = "test-tiny"
    viewer.open(str(slide), plugin="napari-histoclip")
    idle_dock = lambda: not dock.runner.busy  # noqa: E731
    wait_until(idle_dock, 120, "the slide")  # the idle dock reads it in its task runner

    from napari_histoclip._widgets._prompts import PromptRow

    dock.zero_shot.prompts.set_rows([PromptRow("tumor", "#ff0000"), PromptRow("stroma", "#00ff00")])
    dock.zero_shot.run_button.native.click()
    wait_until(idle_dock, 300, "zero-shot")
    print("step zero-shot", flush=True)

    regions = dock.captions.new_layer()
    regions.add_rectangles(np.array([[400, 300], [1000, 900]]))
    dock.captions.captioner.value = captioner
    dock.captions.caption_button.native.click()
    wait_until(idle_dock, 300, "caption")
    print("step caption", flush=True)

    folder = workdir / "cohort"
    folder.mkdir()
    (folder / slide.name).symlink_to(slide)
    dock.search.folder.value = folder
    dock.search.index_folder.value = workdir / "index"
    dock.search.build_button.native.click()
    wait_until(idle_dock, 300, "index build")
    dock.search.text.value = "tumor"
    dock.search.text_button.native.click()
    wait_until(idle_dock, 300, "search")
    first = len(dock.search.hits)
    print(f"step search {first} hits", flush=True)

    end = time.monotonic() + idle  # Qt retires idle pool threads after 30 s
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.05)
    dock.search.hits = []
    dock.search.text_button.native.click()
    wait_until(idle_dock, 300, "search after the idle wait")
    print(f"step search again {len(dock.search.hits)} hits", flush=True)
    if not dock.search.hits or len(dock.search.hits) != first:
        problems.append(f"the search after {idle:.0f} s idle found {len(dock.search.hits)} hits, first {first}")

    holder = dock.parent()
    holder.title.close_button.click()  # the dock's 'x', as a user closes it
    wait_until(lambda: dock.backend_slot.current is None, 60, "the dock to release its backend")
    print("step dock closed", flush=True)
    viewer.close()
    QApplication.processEvents()
    for p in problems:
        print(f"PROBLEM {p}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
