"""The float16 vectors file of the cohort index and the exact re-ranking stage of an IVF search
(backend.index.exact_rows): it orders what SQ6 cannot, stays in step with the FAISS ids through
adds, replacements, rebuilds and crashes, and a file that cannot be trusted is rewritten (or
skipped by a reader); indexes made without it search as before."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError
from backend.index import CohortIndex, IndexPolicy
from backend.index import exact_rows as er
from tests.support.index_faults import crash_adding
from tests.support.synthetic import SyntheticCohort, SyntheticSlide, clustered_sphere, synthetic_cohort

MODEL = "test-model"
pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    return synthetic_cohort()


def _store_rows(index: CohortIndex) -> np.ndarray:
    """Every vector id's float16 vector, from the store, in id order (retired slides too)."""
    parts = [index._store.read_vectors(s, index.dim) for s in index._store.slides(live_only=False)]
    return np.concatenate(parts).astype(np.float16) if parts else np.zeros((0, index.dim), np.float16)


def _assert_in_step(path: Path) -> None:
    """On disk: one vectors file, of the current generation, holding the store's vectors in
    FAISS label order, as many as the FAISS index holds."""
    with CohortIndex.open(path) as index:
        files = sorted(p.name for p in path.iterdir() if "vectors" in p.name)
        assert files == [f"vectors-{index.stats().generation}.npy"]
        rows = np.load(path / files[0], mmap_mode="r")
        assert len(rows) == index._index.ntotal
        np.testing.assert_array_equal(rows, _store_rows(index))


# --- the exact stage -----------------------------------------------------------------------


def test_exact_stage_orders_what_sq6_cannot_on_isotropic_clusters(tmp_path: Path) -> None:
    n, dim, per = 4000, 512, 500
    base = clustered_sphere(n, dim, 16, 0, stream=0, iso=1.0)
    queries = clustered_sphere(50, dim, 16, 0, stream=1, iso=1.0)
    truth = np.argsort(-(queries @ base.astype(np.float16).astype(np.float32).T), axis=1)[:, :10]
    grid = np.arange(per)
    xy = np.stack([grid % 50, grid // 50], axis=1).astype(np.int64) * 224
    policy = IndexPolicy(ivf_threshold=n, k_factor=64)
    with CohortIndex.create(tmp_path / "idx", model_id=MODEL, dim=dim, policy=policy) as index:
        for i, a in enumerate(range(0, n, per)):
            index.add(SyntheticSlide(f"fp{i}", f"s{i}", f"/c/s{i}.svs", MODEL, "spec", xy, 224.0, base[a : a + per]))
        assert index.stats().kind == "ivf"

    def recall(rerank_factor: int | None) -> tuple[float, np.ndarray]:
        with CohortIndex.open(tmp_path / "idx", policy=IndexPolicy(ivf_threshold=n, k_factor=64,
                                                                   rerank_factor=rerank_factor)) as index:
            hits = index.search(queries, 10, model_id=MODEL, merge=False)
        found = [[int(h.fingerprint[2:]) * per + (h.box[1] // 224) * 50 + h.box[0] // 224 for h in row]
                 for row in hits]
        top = np.array([[row[0].score, found[i][0]] for i, row in enumerate(hits)])
        return sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.size, top

    sq6, _ = recall(0)  # 0: no exact stage
    exact, top = recall(None)
    assert exact >= 0.98 and exact >= sq6 + 0.03, (sq6, exact)
    # the scores are the exact float16 cosines (the SQ6 stage's are approximations)
    exact_cos = np.einsum("ij,ij->i", base[top[:, 1].astype(int)].astype(np.float16).astype(np.float32), queries)
    np.testing.assert_allclose(top[:, 0], exact_cos, atol=1e-5)


def test_rerank_keeps_the_best_k_of_each_row_and_pads_missing() -> None:
    rows = np.eye(4, dtype=np.float16)
    queries = np.array([[0.1, 0.9, 0.0, 0.2], [1.0, 0.0, 0.0, 0.0]], np.float32)
    scores, labels = er.rerank(queries, np.array([[3, 1, 0], [2, -1, -1]]), rows, 2)
    assert labels.tolist() == [[1, 3], [2, -1]]
    np.testing.assert_allclose(scores[0], [0.9, 0.2], atol=1e-3)
    assert scores[1, 1] == -np.inf


# --- in step with the FAISS ids ------------------------------------------------------------


def test_vectors_file_follows_adds_replacements_and_rebuilds(tmp_path: Path, cohort: SyntheticCohort) -> None:
    path = tmp_path / "idx"
    policy = IndexPolicy(ivf_threshold=500, max_dead_fraction=0.2)
    with CohortIndex.create(path, model_id=MODEL, dim=32, policy=policy) as index:
        for s in cohort.slides[:3]:  # the 4th slide crosses 500: flat -> IVF, generation 1
            index.add(s)
        assert index.stats().generation == 0 and len(index._rows) == 3 * 144
    _assert_in_step(path)
    with CohortIndex.open(path, policy=policy) as index:
        for s in cohort.slides[3:6]:
            index.add(s)
        assert index.stats().generation == 1 and index._knobs().rows is not None
        changed = SyntheticSlide(**{**vars(cohort.slides[4]), "slide_fingerprint": "changed-file",
                                    "vectors": cohort.slides[4].vectors[::-1].copy()})
        assert index.add(changed).status == "replaced"  # retired rows stay until a compaction
        assert len(index._rows) == index._index.ntotal == 7 * 144
        hit = index.search(changed.vectors[0], 1, model_id=MODEL, merge=False)[0]
        assert hit.fingerprint == "changed-file" and hit.score == pytest.approx(1.0, abs=2e-3)
    _assert_in_step(path)
    with CohortIndex.open(path, policy=policy) as index:
        index.remove(cohort.slides[0].slide_fingerprint)  # 2 of 7 slides retired: compaction
        assert index.stats().generation == 2 and len(index._rows) == index._index.ntotal == 5 * 144
    _assert_in_step(path)


@pytest.mark.parametrize("stage", ["faiss-added", "rows-appended"])
def test_a_crash_between_faiss_and_the_vectors_file_is_repaired(
    tmp_path: Path, cohort: SyntheticCohort, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    path = tmp_path / "idx"
    index = CohortIndex.create(path, model_id=MODEL, dim=32, policy=IndexPolicy(ivf_threshold=400))
    for s in cohort.slides[:3]:
        index.add(s)
    index.flush()

    crash_adding(index, cohort.slides[3], monkeypatch, stage)
    behind = er.check_rows(path / "vectors-1.npy", 32)
    assert behind == (3 if stage == "faiss-added" else 4) * 144
    _assert_in_step(path)  # the writer's open appended the missing slide
    with CohortIndex.open(path) as index:
        hit = index.search(cohort.slides[3].vectors[7], 1, model_id=MODEL, merge=False)[0]
        assert hit.fingerprint == cohort.slides[3].slide_fingerprint and index._knobs().rows is not None


def test_an_interrupted_append_is_ignored_then_overwritten(tmp_path: Path, cohort: SyntheticCohort) -> None:
    path = tmp_path / "idx"
    with CohortIndex.create(path, model_id=MODEL, dim=32) as index:
        index.add(cohort.slides[0])
    with open(path / "vectors-0.npy", "ab") as f:  # rows written, header not yet updated
        f.write(np.ones((10, 32), np.float16).tobytes())
    with CohortIndex.open(path) as index:
        assert len(index._rows) == 144
        index.add(cohort.slides[1])
    _assert_in_step(path)


def test_a_reader_follows_the_writers_appends(tmp_path: Path, cohort: SyntheticCohort) -> None:
    path = tmp_path / "idx"
    policy = IndexPolicy(ivf_threshold=300)
    with CohortIndex.create(path, model_id=MODEL, dim=32, policy=policy) as writer:
        for s in cohort.slides[:3]:
            writer.add(s)
        with CohortIndex.open(path, read_only=True) as reader:
            writer.add(cohort.slides[3])
            hit = reader.search(cohort.slides[3].vectors[0], 1, model_id=MODEL, merge=False)[0]
            assert hit.fingerprint == cohort.slides[3].slide_fingerprint
            assert len(reader._rows) == reader._index.ntotal == 4 * 144 and reader._knobs().rows is not None


# --- files that cannot be trusted, and indexes without one -----------------------------------


def _filled(path: Path, cohort: SyntheticCohort, n: int = 4) -> Path:
    with CohortIndex.create(path, model_id=MODEL, dim=32, policy=IndexPolicy(ivf_threshold=300)) as index:
        for s in cohort.slides[:n]:
            index.add(s)
    return path / "vectors-1.npy"


def test_check_rows_names_the_file_and_the_cause(tmp_path: Path) -> None:
    f = tmp_path / "vectors-0.npy"
    with pytest.raises(InputError, match=r"vectors-0\.npy: the index's float16 vectors file is missing"):
        er.check_rows(f, 8)
    f.write_bytes(b"not numpy")
    with pytest.raises(InputError, match=r"vectors-0\.npy: not a readable float16 vectors file"):
        er.check_rows(f, 8)
    er.write_rows(f, [np.ones((3, 8))], 8)
    assert er.check_rows(f, 8) == 3 and np.load(f).shape == (3, 8)
    with pytest.raises(InputError, match=r"vectors-0\.npy: vectors of dimension 8, the index's are 16"):
        er.check_rows(f, 16)
    with open(f, "r+b") as h:
        h.truncate(er.HEADER_BYTES + 2 * 8 * 2 + 5)
    with pytest.raises(InputError, match=r"vectors-0\.npy: truncated .* counts 3 rows"):
        er.check_rows(f, 8)
    with pytest.raises(InputError, match="holds 2 rows, expected 3 before this append|truncated"):
        er.append_rows(f, np.ones((1, 8)), 3, 8)
    np.save(tmp_path / "plain.npy", np.ones((2, 8), np.float32))
    with pytest.raises(InputError, match=r"plain\.npy: holds float32"):
        er.check_rows(tmp_path / "plain.npy", 8)


@pytest.mark.parametrize("damage", ["truncated", "other-rows", "missing", "other-dim"])
def test_an_untrusted_vectors_file_is_rewritten_by_a_writer_and_skipped_by_a_reader(
    tmp_path: Path, cohort: SyntheticCohort, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    f = _filled(tmp_path / "idx", cohort)
    rows = np.load(f)
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "other-rows":  # a file of another index: same shape, other vectors
        er.write_rows(f, [rows[::-1]], 32)
    elif damage == "missing":
        f.unlink()
    else:
        er.write_rows(f, [np.ones((len(rows), 16))], 16)
    before = f.read_bytes() if f.exists() else None
    with caplog.at_level(logging.WARNING, logger="backend.index.directory"):
        with CohortIndex.open(tmp_path / "idx", read_only=True) as reader:
            assert reader._knobs().rows is None  # searched as an index without the file
            hit = reader.search(cohort.slides[2].vectors[5], 1, model_id=MODEL, merge=False)[0]
            assert hit.fingerprint == cohort.slides[2].slide_fingerprint
            reader.search(cohort.slides[2].vectors[6], 1, model_id=MODEL)
            assert reader._knobs().rows is None  # still refused after searches (no silent re-map)
    warned = [r.getMessage() for r in caplog.records if "vectors-1.npy" in r.getMessage()]
    assert len(warned) == 1 and "without the exact re-ranking stage" in warned[0]
    assert (f.read_bytes() if f.exists() else None) == before  # a reader writes nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="backend.index.directory"):
        with CohortIndex.open(tmp_path / "idx") as writer:
            assert writer._knobs().rows is not None
    assert any("rewriting it from the store" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(f), rows)
    _assert_in_step(tmp_path / "idx")


def test_an_index_made_before_the_vectors_file_searches_as_before(
    tmp_path: Path, cohort: SyntheticCohort, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "idx"
    f = _filled(path, cohort, 3)
    f.unlink()
    db = sqlite3.connect(path / "meta.sqlite")
    with db:
        db.execute("DELETE FROM info WHERE key = ?", (er.INFO_KEY,))
    db.close()
    with caplog.at_level(logging.WARNING):
        with CohortIndex.open(path) as index:
            index.add(cohort.slides[3])
            assert index._knobs().rows is None and index.stats().kind == "ivf"
            hit = index.search(cohort.slides[3].vectors[2], 1, model_id=MODEL, merge=False)[0]
            assert hit.fingerprint == cohort.slides[3].slide_fingerprint
    assert not caplog.records and not any("vectors" in p.name for p in path.iterdir())
    with CohortIndex.open(path) as index:  # its next rebuild writes one and records it
        index.rebuild()
        assert index._store.get_info(er.INFO_KEY) == er.INFO_VALUE and index._knobs().rows is not None
    _assert_in_step(path)


def test_policy_rejects_a_negative_rerank_factor() -> None:
    with pytest.raises(InputError, match=r"IndexPolicy\.rerank_factor=-1 is out of range"):
        IndexPolicy(rerank_factor=-1)


def test_the_typical_sample_is_decoded_once_per_view_and_filter(
    tmp_path: Path, cohort: SyntheticCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backend.index.query as q

    decoded: list[int] = []
    reconstruct = q.fi.reconstruct
    monkeypatch.setattr(q.fi, "reconstruct", lambda index, ids, rows=None: (decoded.append(len(ids)),
                                                                           reconstruct(index, ids, rows))[1])
    with CohortIndex.create(tmp_path / "idx", model_id=MODEL, dim=32) as index:
        for s in cohort.slides[:3]:
            index.add(s)
        query = cohort.slides[1].vectors[3]
        first = index.search(query, 3, model_id=MODEL)
        assert index.search(query, 3, model_id=MODEL) == first and decoded == [3 * 144]
        own = cohort.slides[1].slide_fingerprint
        apart = index.search(query, 3, model_id=MODEL, exclude_slides=[own])
        assert index.search(query, 3, model_id=MODEL, exclude_slides=[own]) == apart
        assert decoded == [3 * 144, 2 * 144] and own not in {h.fingerprint for h in apart}
        index.add(cohort.slides[3])  # a new view: decoded again
        index.search(query, 3, model_id=MODEL)
        assert decoded == [3 * 144, 2 * 144, 4 * 144]


def test_inner_products_equal_numpys_and_name_a_shape_mismatch() -> None:
    from backend.index.faiss_index import inner_products

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((37, 24)).astype(np.float16)  # the vectors file's dtype
    query = rng.standard_normal(24).astype(np.float32)
    np.testing.assert_allclose(inner_products(rows, query), rows.astype(np.float32) @ query, rtol=1e-5, atol=1e-5)
    assert inner_products(np.zeros((0, 24), np.float32), query).shape == (0,)
    with pytest.raises(InputError, match=r"rows \(37, 24\) with a query of 23 values"):
        inner_products(rows, query[:23])
