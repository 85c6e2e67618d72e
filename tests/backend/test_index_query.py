"""Searching a cohort index: tile/text/region queries, filters, merging, flat vs IVF.

The cohort is synthetic (``tests.support.synthetic``): tissue types in patches, a mixed
region on slide 0 with near-copies on two other slides, and a motif (a tissue found nowhere
else) as a 3x3 block on three slides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InputError, ModelMismatchError
from backend.index import CohortIndex, Hit, IndexPolicy, RegionQueryMode
from tests.support.synthetic import SyntheticCohort, synthetic_cohort

MODEL = "test-model"
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    return synthetic_cohort()


def _build(path: Path, cohort: SyntheticCohort, **policy: object) -> CohortIndex:
    index = CohortIndex.create(path, model_id=MODEL, dim=32, policy=IndexPolicy(**policy))
    for s in cohort.slides:
        index.add(s)
    return index


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory, cohort: SyntheticCohort) -> Iterator[CohortIndex]:
    index = _build(tmp_path_factory.mktemp("flat") / "idx", cohort)
    assert index.stats().kind == "flat"
    yield index
    index.close()


@pytest.fixture(scope="module")
def ivf(tmp_path_factory: pytest.TempPathFactory, cohort: SyntheticCohort) -> Iterator[CohortIndex]:
    index = _build(tmp_path_factory.mktemp("ivf") / "idx", cohort, ivf_threshold=500)
    yield index
    index.close()


def _places(hits: list[Hit]) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [(h.fingerprint, h.box) for h in hits]


def _motif_tile(cohort: SyntheticCohort) -> tuple[str, np.ndarray]:
    fp = next(iter(cohort.motif_boxes))
    s = cohort.slide(fp)
    x, y, _, _ = cohort.motif_boxes[fp]
    row = int(np.flatnonzero((s.coords[:, 0] == x + 224) & (s.coords[:, 1] == y + 224))[0])  # centre tile
    return fp, s.vectors[row]


def test_a_tile_finds_itself_first(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    s = cohort.slides[6]
    hits = flat.search(s.vectors[40], 3, model_id=MODEL, merge=False)
    assert hits[0].fingerprint == s.slide_fingerprint
    assert hits[0].box == hits[0].best_tile == (int(s.coords[40, 0]), int(s.coords[40, 1]), 224, 224)
    assert hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 storage
    assert hits[0].slide_path == s.slide_path and hits[0].slide_name == s.slide_name
    assert hits[0].spec_key == s.spec_key and hits[0].n_tiles == 1
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_adjacent_matching_tiles_are_merged_into_one_place(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    _, tile = _motif_tile(cohort)
    tiles = flat.search(tile, 27, model_id=MODEL, merge=False)
    assert {h.fingerprint for h in tiles} == set(cohort.motif_boxes)  # 27 motif tiles ...
    places = flat.search(tile, 3, model_id=MODEL)
    assert sorted(_places(places)) == sorted(cohort.motif_boxes.items())  # ... are 3 places
    assert [h.n_tiles for h in places] == [9, 9, 9]
    assert all(h.best_tile[2] == 224 for h in places)


def test_a_text_query_is_just_a_vector(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    # a "prompt" embedding close to the motif's direction, as a text encoder would give
    _, tile = _motif_tile(cohort)
    prompt = tile + np.random.default_rng(3).standard_normal(32).astype(np.float32) * 0.05
    hits = flat.search(prompt, 3, model_id=MODEL)
    assert {h.fingerprint for h in hits} == set(cohort.motif_boxes)


def test_filters_exclude_or_restrict_slides(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    fp, tile = _motif_tile(cohort)
    others = [f for f in cohort.motif_boxes if f != fp]
    hits = flat.search(tile, 5, model_id=MODEL, exclude_slides=[fp])
    assert fp not in {h.fingerprint for h in hits}
    assert sorted(_places(hits[:2])) == sorted((f, cohort.motif_boxes[f]) for f in others)
    only = [cohort.slides[0].slide_path, cohort.slides[7].slide_name]  # by path and by name
    hits = flat.search(tile, 10, model_id=MODEL, only_slides=only)
    assert {h.fingerprint for h in hits} <= {cohort.slides[0].slide_fingerprint, cohort.slides[7].slide_fingerprint}
    assert len(hits) == 10
    assert flat.search(tile, 5, model_id=MODEL, only_slides=[]) == []
    assert flat.search(tile, 1, model_id=MODEL, exclude_slides=["not-in-the-index"])[0].score > 0.9
    with pytest.raises(InputError, match="only_slides: 'nope'"):
        flat.search(tile, 5, model_id=MODEL, only_slides=["nope"])


def test_batched_queries_give_one_list_each(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    queries = cohort.slides[3].vectors[:4]
    batched = flat.search(queries, 2, model_id=MODEL)
    assert len(batched) == 4
    assert batched[2] == flat.search(queries[2], 2, model_id=MODEL)
    # search_each: always one list per row, a (D,) query being one row
    assert flat.search_each(queries, 2, model_id=MODEL) == batched
    assert flat.search_each(queries[2], 2, model_id=MODEL) == [batched[2]]
    assert batched[2]  # the comparisons above are of real hits


def test_another_models_query_is_a_clear_error(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    v = cohort.slides[0].vectors[0]
    for call in (
        lambda: flat.search(v, 5, model_id="quiltnet-b32"),
        lambda: flat.search_region(cohort.region_vectors, 5, model_id="quiltnet-b32"),
    ):
        with pytest.raises(ModelMismatchError) as err:
            call()
        assert "quiltnet-b32" in str(err.value) and MODEL in str(err.value)
    with pytest.raises(InputError, match=r"expected \(32,\) or \(n, 32\)"):
        flat.search(np.ones(16, np.float32), 5, model_id=MODEL)
    with pytest.raises(InputError, match="k=0"):
        flat.search(v, 0, model_id=MODEL)
    with pytest.raises(InputError, match="region query mode 'mean'"):
        flat.search_region(cohort.region_vectors, 5, model_id=MODEL, mode="mean")


def _copies_found(hits: list[Hit], cohort: SyntheticCohort) -> tuple[int, int]:
    """(copies among the top len(copies) places: exactly boxed, overlapping the copy)."""
    top = hits[: len(cohort.copy_boxes)]
    exact = sum(cohort.copy_boxes.get(h.fingerprint) == h.box for h in top)
    overlap = 0
    for h in top:
        if h.fingerprint in cohort.copy_boxes:
            x, y, w, hh = cohort.copy_boxes[h.fingerprint]
            bx, by, bw, bh = h.box
            overlap += bx < x + w and x < bx + bw and by < y + hh and y < by + bh
    return exact, overlap


def test_region_query_modes_on_planted_copies(tmp_path: Path) -> None:
    """The default (tile-set) finds a mixed region's near-copies; pooling blurs them away."""
    found = {mode: np.zeros(2, int) for mode in RegionQueryMode}
    n_copies = 0
    for seed in range(3):
        cohort = synthetic_cohort(seed=seed)
        with _build(tmp_path / f"idx{seed}", cohort) as index:
            for mode in RegionQueryMode:
                hits = index.search_region(cohort.region_vectors, 5, model_id=MODEL, mode=mode,
                                           exclude_slides=[cohort.region_slide])
                found[mode] += _copies_found(hits, cohort)
            default = index.search_region(cohort.region_vectors, 5, model_id=MODEL,
                                          exclude_slides=[cohort.region_slide])
            assert default == index.search_region(cohort.region_vectors, 5, model_id=MODEL, mode="tileset",
                                                  exclude_slides=[cohort.region_slide])
            top = default[: len(cohort.copy_boxes)]
            assert sorted(_places(top)) == sorted(cohort.copy_boxes.items())
            assert all(h.n_tiles == 9 and h.score > 0.98 for h in top)
            # without the filter the region finds itself first
            itself = index.search_region(cohort.region_vectors, 1, model_id=MODEL)[0]
            assert (itself.fingerprint, itself.box) == (cohort.region_slide, cohort.region_box)
        n_copies += len(cohort.copy_boxes)
    assert found[RegionQueryMode.TILESET].tolist() == [n_copies, n_copies]
    # measured: pooled boxes none of the copies exactly and ranks them lower
    assert found[RegionQueryMode.POOLED][0] < n_copies and found[RegionQueryMode.POOLED][1] < n_copies


def test_pooled_and_tileset_agree_on_a_uniform_region(flat: CohortIndex, cohort: SyntheticCohort) -> None:
    fp = next(iter(cohort.motif_boxes))
    s = cohort.slide(fp)
    x, y, w, h = cohort.motif_boxes[fp]
    inside = (s.coords[:, 0] >= x) & (s.coords[:, 0] < x + w) & (s.coords[:, 1] >= y) & (s.coords[:, 1] < y + h)
    for mode in RegionQueryMode:
        hits = flat.search_region(s.vectors[inside], 2, model_id=MODEL, mode=mode, exclude_slides=[fp])
        assert sorted(_places(hits)) == sorted((f, b) for f, b in cohort.motif_boxes.items() if f != fp)


def test_switch_to_ivf_keeps_the_top_hits(flat: CohortIndex, ivf: CohortIndex, cohort: SyntheticCohort) -> None:
    stats = ivf.stats()
    assert (stats.kind, stats.n_live) == ("ivf", flat.stats().n_live)
    assert stats.nlist is not None and stats.nlist > 1
    # the lists' imbalance, as FAISS defines it: nlist * sum(size^2) / n^2
    from backend.index import faiss_index as fi

    ivf_lists = fi._faiss().extract_index_ivf(ivf._index).invlists
    sizes = np.array([ivf_lists.list_size(i) for i in range(stats.nlist)], dtype=float)
    assert stats.list_imbalance == pytest.approx(stats.nlist * (sizes**2).sum() / sizes.sum() ** 2, rel=1e-6)
    assert stats.list_imbalance >= 1.0 and flat.stats().list_imbalance is None
    _, tile = _motif_tile(cohort)
    for index in (flat, ivf):
        assert sorted(_places(index.search(tile, 3, model_id=MODEL))) == sorted(cohort.motif_boxes.items())
    region = [ix.search_region(cohort.region_vectors, 2, model_id=MODEL, exclude_slides=[cohort.region_slide])
              for ix in (flat, ivf)]
    assert _places(region[0]) == _places(region[1])
    copies = np.concatenate([cohort.slide(fp).vectors[:50] for fp in cohort.copy_boxes])
    top_flat = [h[0] for h in flat.search(copies, 1, model_id=MODEL, merge=False)]
    top_ivf = [h[0] for h in ivf.search(copies, 1, model_id=MODEL, merge=False)]
    assert _places(top_flat) == _places(top_ivf)
    assert np.allclose([h.score for h in top_flat], [h.score for h in top_ivf], atol=0.02)


def test_ivf_is_retrained_as_the_cohort_grows(tmp_path: Path) -> None:
    cohort = synthetic_cohort(n_slides=12)
    index = CohortIndex.create(tmp_path / "idx", model_id=MODEL, dim=32,
                               policy=IndexPolicy(ivf_threshold=400, retrain_growth=2.0))
    rebuilt_at = [i for i, s in enumerate(cohort.slides) if index.add(s).rebuilt]
    # 144 a slide: IVF at 432 (3 slides), retrained at 864 (6) and 1728 (12)
    assert rebuilt_at == [2, 5, 11]
    assert index.stats().kind == "ivf" and index.stats().generation == 3
    index.close()


def test_empty_index_and_large_k(tmp_path: Path, cohort: SyntheticCohort) -> None:
    with CohortIndex.create(tmp_path / "idx", model_id=MODEL, dim=32) as index:
        assert index.search(cohort.slides[0].vectors[0], 5, model_id=MODEL) == []
        index.add(cohort.slides[0])
        hits = index.search(cohort.slides[0].vectors[0], 1000, model_id=MODEL, merge=False)
        assert len(hits) == 144


def test_benchmark_smoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() sets the thread variables for its own process: give them back afterwards (the
    # module's one_faiss_thread fixture gives back FAISS's pool, which main also sets).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))
    from benchmarks import search_scale as module

    module.main(["--n", "5000", "--dim", "64", "--queries", "50", "--flat-queries", "5", "--threads", "1",
                 "--through-index", "--slide-tiles", "500", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    for text in ("recall@10", "p50", "memory ratio", "speed-up", "load average", "through CohortIndex"):
        assert text in out
    assert list(tmp_path.iterdir()) == []  # the index directory was cleaned up


def test_a_place_fetch_keeps_the_top_k_candidate_pool_instead_of_multiplying_it() -> None:
    from backend.index import faiss_index as fi
    from backend.index.query import MIN_FETCH_FACTOR, Knobs, fetch_k_factor
    from tests.support.synthetic import clustered_sphere

    base = clustered_sphere(4000, 64, 16, 0)
    params = fi.choose_ivf_params(len(base), 64, k_factor=64)
    ivf = fi.train_ivf(base, params)
    fi.add(ivf, base)
    # a 40-tile fetch toward 10 places: the 640 candidates that give the top 10 their recall
    assert fetch_k_factor(ivf, Knobs(), 10, 40) * 40 == 10 * 64
    assert fetch_k_factor(ivf, Knobs(k_factor=8), 10, 40) == MIN_FETCH_FACTOR  # floor when the pool is small
    assert fetch_k_factor(ivf, Knobs(), 10, 640) == MIN_FETCH_FACTOR
    assert fetch_k_factor(ivf, Knobs(k_factor=32), 10, 10) == 32  # no extra tiles: the factor as given
    flat = fi.new_flat(64)
    assert fetch_k_factor(flat, Knobs(k_factor=32), 10, 40) == 32  # exact: nothing to size
    # and a place search's best place is the top-1 tile of the plain search on the same index
    _, top = fi.search(ivf, base[:5], 1, k_factor=64)
    _, fetched = fi.search(ivf, base[:5], 40, k_factor=fetch_k_factor(ivf, Knobs(), 10, 40))
    assert (fetched[:, 0] == top[:, 0]).all()
