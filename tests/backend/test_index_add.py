"""Building a cohort index: idempotent adds, changed slides, checks, locking (backend.index)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError, ModelMismatchError
from backend.index import AddStatus, CohortIndex, IndexPolicy
from tests.support.synthetic import SyntheticCohort, synthetic_cohort

MODEL = "test-model"
DIM = 32


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    return synthetic_cohort()


def _create(tmp_path: Path, **policy: object) -> CohortIndex:
    return CohortIndex.create(tmp_path / "idx", model_id=MODEL, dim=DIM, policy=IndexPolicy(**policy))


def _total(cohort: SyntheticCohort) -> int:
    return sum(len(s.vectors) for s in cohort.slides)


def test_add_is_idempotent_and_survives_reopening(tmp_path: Path, cohort: SyntheticCohort) -> None:
    with _create(tmp_path) as index:
        first = [index.add(s) for s in cohort.slides]
        assert [r.status for r in first] == [AddStatus.ADDED] * len(cohort.slides)
        assert [r.n_tiles for r in first] == [len(s.vectors) for s in cohort.slides]
        again = [index.add(s) for s in cohort.slides]
        assert {r.status for r in again} == {AddStatus.SKIPPED}
        assert all(r.n_tiles == 0 for r in again)
        assert len(index) == _total(cohort)
        assert index.stats().n_dead == 0
    with CohortIndex.open(tmp_path / "idx") as index:
        assert len(index) == _total(cohort)
        assert [s.fingerprint for s in index.slides()] == [s.slide_fingerprint for s in cohort.slides]
        assert all(index.contains(s.slide_fingerprint) for s in cohort.slides)
        assert index.add(cohort.slides[2]).status is AddStatus.SKIPPED


def test_changed_slide_replaces_its_vectors(tmp_path: Path, cohort: SyntheticCohort) -> None:
    old = cohort.slides[3]
    rng = np.random.default_rng(1)
    new_vectors = rng.standard_normal((100, DIM)).astype(np.float32)
    changed = dataclasses.replace(old, slide_fingerprint="changed-file", vectors=new_vectors, coords=old.coords[:100])
    with _create(tmp_path, max_dead_fraction=1.0) as index:
        for s in cohort.slides:
            index.add(s)
        result = index.add(changed)
        assert result.status is AddStatus.REPLACED
        assert result.replaced_fingerprint == old.slide_fingerprint
        assert not index.contains(old.slide_fingerprint) and index.contains("changed-file")
        assert len(index) == _total(cohort) - len(old.vectors) + 100
        assert index.stats().n_dead == len(old.vectors)  # masked out until compaction
        assert [s.fingerprint for s in index.slides() if s.slide_path == old.slide_path] == ["changed-file"]
        # the old vectors are never found again, even by themselves
        hits = index.search(old.vectors[:20], 5, model_id=MODEL, merge=False)
        assert all(h.fingerprint != old.slide_fingerprint for row in hits for h in row)
        # the new ones are
        assert index.search(new_vectors[7], 1, model_id=MODEL)[0].fingerprint == "changed-file"
    with CohortIndex.open(tmp_path / "idx") as index:
        assert index.stats().n_dead == len(old.vectors)
        generation = index.stats().generation
        index.rebuild()  # compaction: retired vectors are dropped, ids renumbered
        stats = index.stats()
        assert (stats.n_dead, stats.generation) == (0, generation + 1)
        assert index.search(new_vectors[7], 1, model_id=MODEL)[0].fingerprint == "changed-file"
        assert index._index.ntotal == len(index)


def test_retired_vectors_beyond_the_policy_trigger_compaction(tmp_path: Path, cohort: SyntheticCohort) -> None:
    with _create(tmp_path, max_dead_fraction=0.15) as index:
        for s in cohort.slides:
            index.add(s)
        first = dataclasses.replace(cohort.slides[0], slide_fingerprint="v2-0")
        assert not index.add(first).rebuilt  # 144 of 1296 ids retired: 11 %
        assert index.stats().n_dead == 144
        second = dataclasses.replace(cohort.slides[1], slide_fingerprint="v2-1")
        assert index.add(second).rebuilt  # 288 of 1440: 20 % > 15 %
        stats = index.stats()
        assert (stats.n_dead, stats.generation, stats.n_live) == (0, 1, _total(cohort))


def test_remove_retires_a_slide(tmp_path: Path, cohort: SyntheticCohort) -> None:
    with _create(tmp_path, max_dead_fraction=1.0) as index:
        for s in cohort.slides:
            index.add(s)
        gone = cohort.slides[4]
        assert index.remove(gone.slide_name)
        assert not index.remove("no-such-slide")
        assert not index.contains(gone.slide_fingerprint)
        hits = index.search(gone.vectors[0], 10, model_id=MODEL, merge=False)
        assert all(h.fingerprint != gone.slide_fingerprint for h in hits)
        assert index.add(gone).status is AddStatus.ADDED  # and it can come back


def test_model_mismatch_on_add_names_both_models(tmp_path: Path, cohort: SyntheticCohort) -> None:
    other = dataclasses.replace(cohort.slides[0], model_id="other-model")
    with _create(tmp_path) as index, pytest.raises(ModelMismatchError) as err:
        index.add(other)
    assert "other-model" in str(err.value) and MODEL in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vectors": np.ones((144, 16), np.float32)}, "expected (N, 32)"),
        ({"coords": np.zeros((10, 2), np.int64)}, "coords have shape (10, 2)"),
        ({"tile_extent": 0.0}, "tile_extent"),
        ({"vectors": np.zeros((144, 32), np.float32)}, "row 0 is zero"),
        ({"slide_fingerprint": ""}, "empty slide_fingerprint"),
    ],
)
def test_bad_embeddings_are_refused_naming_the_slide(
    tmp_path: Path, cohort: SyntheticCohort, change: dict, message: str
) -> None:
    bad = dataclasses.replace(cohort.slides[0], **change)
    with _create(tmp_path) as index:
        with pytest.raises(InputError) as err:
            index.add(bad)
        assert message in str(err.value) and "slide-00.svs" in str(err.value)
        assert len(index) == 0 and index.slides() == []


def test_slide_path_may_come_as_an_argument(tmp_path: Path, cohort: SyntheticCohort) -> None:
    @dataclasses.dataclass(frozen=True)
    class NoPath:  # an EmbeddingSet without slide_path
        slide_fingerprint: str
        slide_name: str
        model_id: str
        spec_key: str
        coords: np.ndarray
        tile_extent: float
        vectors: np.ndarray

    s = cohort.slides[0]
    emb = NoPath(s.slide_fingerprint, s.slide_name, s.model_id, s.spec_key, s.coords, s.tile_extent, s.vectors)
    with _create(tmp_path) as index:
        with pytest.raises(InputError, match="no slide_path"):
            index.add(emb)
        result = index.add(emb, tmp_path / "a.svs")
        assert result.slide_path == str((tmp_path / "a.svs").resolve())


def test_a_slide_without_tiles_is_recorded(tmp_path: Path, cohort: SyntheticCohort) -> None:
    empty = dataclasses.replace(
        cohort.slides[0], slide_fingerprint="blank", slide_path="/cohort/blank.svs",
        vectors=np.zeros((0, DIM), np.float32), coords=np.zeros((0, 2), np.int64),
    )
    with _create(tmp_path) as index:
        assert index.add(empty).status is AddStatus.ADDED
        assert index.add(cohort.slides[1]).status is AddStatus.ADDED
        assert index.add(empty).status is AddStatus.SKIPPED
        hit = index.search(cohort.slides[1].vectors[3], 1, model_id=MODEL)[0]
        assert hit.fingerprint == cohort.slides[1].slide_fingerprint


def test_create_and_open_refuse_wrong_directories(tmp_path: Path) -> None:
    _create(tmp_path).close()
    with pytest.raises(InputError, match="already holds a cohort index"):
        _create(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        CohortIndex.create(tmp_path / "other", model_id=MODEL, dim=DIM)
    with pytest.raises(InputError, match="no cohort index here"):
        CohortIndex.open(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "meta.sqlite").write_text("not a database")
    with pytest.raises(InputError, match="meta.sqlite"):
        CohortIndex.open(tmp_path / "junk")
    with pytest.raises(InputError, match="retrain_growth"):
        IndexPolicy(retrain_growth=1.0)


def test_one_writer_many_readers(tmp_path: Path, cohort: SyntheticCohort) -> None:
    writer = _create(tmp_path)
    writer.add(cohort.slides[0])
    writer.flush()
    try:
        with pytest.raises(InputError, match="open for writing elsewhere"):
            CohortIndex.open(tmp_path / "idx")
        with CohortIndex.open(tmp_path / "idx", read_only=True) as reader:
            assert len(reader) == len(cohort.slides[0].vectors)
            with pytest.raises(InputError, match="read-only"):
                reader.add(cohort.slides[1])
            writer.add(cohort.slides[1])  # committed, not yet saved to the FAISS file
            hit = reader.search(cohort.slides[1].vectors[5], 1, model_id=MODEL)[0]  # the reader keeps up
            assert hit.fingerprint == cohort.slides[1].slide_fingerprint
            assert len(reader) == 2 * len(cohort.slides[0].vectors)
    finally:
        writer.close()
    CohortIndex.open(tmp_path / "idx").close()  # the lock went with the writer


def test_importing_the_index_does_not_import_faiss() -> None:
    code = "import sys, backend.index; assert 'faiss' not in sys.modules, 'faiss imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
