"""Kill safety of the cohort index: after a crash at any point it reopens consistent and resumes.

Two ways to die: an exception at a crash point of ``CohortIndex`` (then the object is dropped
without saving, as a dead process would), and a real ``SIGKILL`` of a subprocess mid-add.
Consistent means: the FAISS index holds exactly the vectors the metadata store lists
(``ntotal == SUM(n_tiles)``), on disk after closing too, and every slide is in exactly once
after resuming.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.index import AddStatus, CohortIndex, IndexPolicy
from tests.support.index_faults import abandon, crash_adding, crash_at
from tests.support.synthetic import SyntheticCohort, synthetic_cohort

MODEL = "test-model"
REPO = Path(__file__).resolve().parents[2]
ADD_STAGES = ("metadata-written", "committed", "faiss-added")
REBUILD_STAGES = ("rebuild-saved", "rebuild-committed")


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    return synthetic_cohort()


def _store_rows(path: Path) -> tuple[int, int]:
    """(vectors listed in the store, of which live) read straight from SQLite."""
    db = sqlite3.connect(path / "meta.sqlite")
    try:
        total, live = db.execute(
            "SELECT COALESCE(SUM(n_tiles), 0), COALESCE(SUM(n_tiles * live), 0) FROM slides"
        ).fetchone()
    finally:
        db.close()
    return int(total), int(live)


def _assert_consistent(path: Path) -> None:
    import faiss

    with CohortIndex.open(path) as index:
        total, live = _store_rows(path)
        assert index._index.ntotal == total
        assert len(index) == live
    files = sorted(p.name for p in path.iterdir() if "faiss" in p.name)
    assert len(files) == 1, files  # one generation's file, no temp files
    assert faiss.read_index(str(path / files[0])).ntotal == _store_rows(path)[0]
    vectors = sorted(p.name for p in path.iterdir() if "vectors" in p.name)  # exact_rows, in step
    assert vectors == [files[0].replace("index-", "vectors-").replace(".faiss", ".npy")]
    assert len(np.load(path / vectors[0], mmap_mode="r")) == _store_rows(path)[0]


def _resume(path: Path, cohort: SyntheticCohort) -> list[AddStatus]:
    with CohortIndex.open(path) as index:
        statuses = [index.add(s).status for s in cohort.slides]
        assert len(index) == sum(len(s.vectors) for s in cohort.slides)
        assert [s.fingerprint for s in index.slides()] == [s.slide_fingerprint for s in cohort.slides]
        hit = index.search(cohort.slides[6].vectors[50], 1, model_id=MODEL, merge=False)[0]
        assert (hit.fingerprint, hit.score > 0.99) == (cohort.slides[6].slide_fingerprint, True)
    return statuses


@pytest.mark.parametrize("stage", ADD_STAGES)
def test_crash_during_add_recovers_and_resumes(
    tmp_path: Path, cohort: SyntheticCohort, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    path = tmp_path / "idx"
    index = CohortIndex.create(path, model_id=MODEL, dim=32)
    for s in cohort.slides[:3]:
        index.add(s)
    index.flush()

    crash_adding(index, cohort.slides[3], monkeypatch, stage)

    with CohortIndex.open(path) as index:
        committed = stage != "metadata-written"
        assert index.contains(cohort.slides[3].slide_fingerprint) is committed
        in_store = sum(len(s.vectors) for s in cohort.slides[: 3 + committed])
        assert index._index.ntotal == _store_rows(path)[0] == in_store
    statuses = _resume(path, cohort)
    # the interrupted slide is re-added if its transaction never committed, else skipped
    assert statuses[3] is (AddStatus.SKIPPED if committed else AddStatus.ADDED)
    assert statuses[:3] == [AddStatus.SKIPPED] * 3 and statuses[4:] == [AddStatus.ADDED] * 4
    _assert_consistent(path)


@pytest.mark.parametrize("stage", REBUILD_STAGES)
def test_crash_during_rebuild_keeps_one_generation(
    tmp_path: Path, cohort: SyntheticCohort, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    path = tmp_path / "idx"
    index = CohortIndex.create(path, model_id=MODEL, dim=32, policy=IndexPolicy(ivf_threshold=500))

    crash_at(monkeypatch, stage)
    added = 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        for s in cohort.slides:  # the 4th slide crosses 500 vectors: flat -> IVF
            index.add(s)
            added += 1
    abandon(index)
    monkeypatch.undo()

    with CohortIndex.open(path) as index:
        stats = index.stats()
        assert stats.generation == (0 if stage == "rebuild-saved" else 1)
        assert stats.kind == ("flat" if stage == "rebuild-saved" else "ivf")
        assert index.contains(cohort.slides[added].slide_fingerprint)  # committed before the rebuild
    _assert_consistent(path)
    _resume(path, cohort)
    with CohortIndex.open(path) as index:
        assert index.stats().kind == "ivf"  # a due rebuild happens on a later add


def test_a_failed_add_heals_in_the_same_process(
    tmp_path: Path, cohort: SyntheticCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CohortIndex.create(tmp_path / "idx", model_id=MODEL, dim=32) as index:
        index.add(cohort.slides[0])

        crash_at(monkeypatch, "committed", "FAISS failed")
        with pytest.raises(RuntimeError):
            index.add(cohort.slides[1])
        monkeypatch.undo()
        hit = index.search(cohort.slides[1].vectors[0], 1, model_id=MODEL)[0]  # synced first
        assert hit.fingerprint == cohort.slides[1].slide_fingerprint
        assert index._index.ntotal == 288
    _assert_consistent(tmp_path / "idx")


def test_missing_damaged_or_stray_files_are_repaired(tmp_path: Path, cohort: SyntheticCohort) -> None:
    path = tmp_path / "idx"
    with CohortIndex.create(path, model_id=MODEL, dim=32) as index:
        for s in cohort.slides[:4]:
            index.add(s)
    (path / "index-0.faiss").write_bytes(b"truncated")  # damaged
    (path / "index-0.faiss.tmp").write_bytes(b"half written")  # a save that was killed
    (path / "index-7.faiss").write_bytes(b"another generation")
    # a reader rebuilds in memory and writes nothing (SQLite's own -shm/-wal files aside)
    def listing() -> list[str]:
        return sorted(p.name for p in path.iterdir() if not p.name.startswith("meta.sqlite-"))

    before = listing()
    with CohortIndex.open(path, read_only=True) as reader:
        assert len(reader) == 4 * 144
        hit = reader.search(cohort.slides[2].vectors[9], 1, model_id=MODEL)[0]
        assert hit.fingerprint == cohort.slides[2].slide_fingerprint
    assert listing() == before
    # a writer rebuilds it into a new generation and tidies up
    with CohortIndex.open(path) as index:
        assert index.stats().generation == 1
        assert len(index) == 4 * 144
    assert not (path / "index-0.faiss.tmp").exists() and not (path / "index-7.faiss").exists()
    (path / "index-1.faiss").unlink()  # missing
    _assert_consistent(path)


_CHILD = """
import os, signal, sys
from backend.index import CohortIndex, IndexPolicy
from tests.support.synthetic import synthetic_cohort

path, stage, victim = sys.argv[1], sys.argv[2], int(sys.argv[3])
cohort = synthetic_cohort()

def crash(self, at):
    if at == stage and len(self.slides()) == victim:
        os.kill(os.getpid(), signal.SIGKILL)

CohortIndex._crash_point = crash
index = CohortIndex.create(path, model_id="test-model", dim=32,
                           policy=IndexPolicy(save_every=200, ivf_threshold=700))
for s in cohort.slides:
    index.add(s)
index.close()
"""


@pytest.mark.parametrize(
    ("stage", "victim", "in_store"),
    [
        ("metadata-written", 3, 3),  # killed inside the transaction: slide 3 rolled back
        ("committed", 2, 3),  # killed after the commit, before FAISS: slide 2 is in
        ("rebuild-saved", 5, 5),  # the 5th slide crosses 700 vectors: killed mid flat -> IVF
    ],
)
def test_sigkill_mid_add_then_resume(
    tmp_path: Path, cohort: SyntheticCohort, stage: str, victim: int, in_store: int
) -> None:
    path = tmp_path / "idx"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), stage, str(victim)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _store_rows(path)[0] == 144 * in_store
    _assert_consistent(path)
    statuses = _resume(path, cohort)
    assert statuses == [AddStatus.SKIPPED] * in_store + [AddStatus.ADDED] * (len(cohort.slides) - in_store)
    _assert_consistent(path)
    with CohortIndex.open(path) as index:
        assert index.stats().kind == "ivf"
        assert np.isclose(index.search(cohort.slides[0].vectors[0], 1, model_id=MODEL)[0].score, 1.0, atol=0.02)
