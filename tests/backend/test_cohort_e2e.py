"""Cohort search end to end: real slides plus generated ones with a planted region.

A 3x3-tile patch of TCGA tissue is pasted into ``gen-0`` (the query's slide), into ``gen-1``
and ``gen-2`` at offsets on the engine's tile grid, and into ``gen-3`` shifted by half a tile;
``gen-4`` has no patch. Tiles are cut at the generated slides' own mpp, so a tile is exactly
``TS`` level-0 pixels and the grid starts at the origin. The TIFF tiles are ``TS`` px too, so
a planted JPEG tile is byte-identical in every slide and its copies have identical pixels.

The model is ``test-tiny`` (random weights): it cannot tell tissues apart by meaning, but it
is deterministic, so identical pixels give identical vectors and near-identical ones close
vectors; that is what these tests rely on.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import CancelledError
from backend.index import CohortIndex
from backend.local import LocalBackend
from backend.slides import slide_fingerprint
from tests.support import cohort_data as cd

TS = 224  # tile side, level-0 px of the generated slides (tiles are cut at their mpp)
TILES = api.TileOptions(tile_size=TS, mpp=cd.MPP)
MODEL = "test-tiny"
SIZE = (2048, 2048)
# Patch offsets in tiles; gen-3's copy sits half a tile off the grid in x and y.
PLANT_AT = {"gen-0.tif": (2 * TS, 2 * TS), "gen-1.tif": (5 * TS, TS), "gen-2.tif": (TS, 4 * TS),
            "gen-3.tif": (3 * TS + TS // 2, 2 * TS + TS // 2)}
ALIGNED = ("gen-1.tif", "gen-2.tif")
SHIFTED = "gen-3.tif"


@dataclass(frozen=True)
class Cohort:
    root: Path
    gen_dir: Path
    real_dir: Path
    index: Path
    backend: LocalBackend
    info: api.IndexInfo
    planted: dict[str, tuple[int, int, int, int]]  # slide name -> planted box

    def path(self, name: str) -> Path:
        return self.gen_dir / name

    def request(self, index: Path | None = None) -> api.IndexRequest:
        return request_for((self.gen_dir, self.real_dir), index or self.index)


def request_for(folders: tuple[Path, ...], index: Path) -> api.IndexRequest:
    return api.IndexRequest(tuple(map(str, folders)), str(index), MODEL, TILES)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, testdata: Path) -> Cohort:
    root = tmp_path_factory.mktemp("cohort")
    gen = root / "generated"
    _, planted = cd.make_cohort(testdata, gen, 5, SIZE, seed=100, tile=TS,
                                patch=cd.patch_from(testdata, 3 * TS), plant_at=PLANT_AT)
    backend = LocalBackend(root / "cache", "cpu")
    info = backend.build_index(request_for((gen, slides_dir), root / "index"))
    return Cohort(root, gen, slides_dir, root / "index", backend, info, planted)


def _region(cohort: Cohort) -> api.Region:
    return api.Region.box(*cohort.planted["gen-0.tif"])


def _rank(hits: list, name: str, box: tuple[int, int, int, int]) -> tuple[int, float, int] | None:
    """1-based rank, score and tile count of the first place on ``name`` covering most of ``box``."""
    for i, h in enumerate(hits, 1):
        if h.slide_name == name and cd.overlap(h.box, box) >= 0.5:
            return i, float(h.score), int(h.n_tiles)
    return None


def test_real_and_generated_slides_are_indexed_and_slides_without_mpp_reported(cohort: Cohort) -> None:
    info = cohort.info
    assert {Path(p).name for p, _ in info.failed} == {"kidney-48-5.tif", "tcga-cr-7395-01a-01-ts1.svs"}
    assert all("no microns-per-pixel" in why for _, why in info.failed)
    assert info.n_slides == 7 and info.model_id == MODEL  # 5 generated + CMU + NDPI
    with CohortIndex.open(cohort.index, read_only=True) as index:
        names = {s.slide_name: s for s in index.slides()}
        assert set(names) == {f"gen-{i}.tif" for i in range(5)} | {"CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi"}
        assert info.n_vectors == len(index) == sum(s.n_tiles for s in names.values())
        # Generated slides: tiles of exactly TS level-0 px on a grid from the origin; the
        # real slides' tiles cover 0.5 µm/px worth of their own pixels.
        assert names["gen-0.tif"].tile_extent == TS
        assert names["CMU-1-Small-Region.svs"].tile_extent == pytest.approx(TS * 0.5 / 0.499, rel=1e-3)
        assert names["test3-DAPI-2-(387).ndpi"].tile_extent == pytest.approx(TS * 0.5 / 0.2282, rel=1e-2)
    records = cd.tile_records(cohort.index)
    gen_xy = np.array([(x, y) for n, x, y, _ in records if n.startswith("gen-")])
    assert len(gen_xy) > 200 and not (gen_xy % TS).any()
    # every tile of every planted patch survived tissue detection
    for name, (x, y, w, h) in cohort.planted.items():
        if name != SHIFTED:
            inside = {(n, px, py) for n, px, py, _ in records if n == name and x <= px < x + w and y <= py < y + h}
            assert len(inside) == 9, name


def test_region_query_finds_the_tile_aligned_copies_first(cohort: Cohort) -> None:
    request = api.SearchRequest(str(cohort.index), MODEL, slide=api.SlideRef(str(cohort.path("gen-0.tif"))),
                                region=_region(cohort), k=5, tiles=TILES)
    hits = cohort.backend.search(request).hits
    assert len(hits) == 5 and "gen-0.tif" not in {h.slide_name for h in hits}  # own slide excluded
    # the two exact copies are the top two places, each covering its whole planted box
    assert {h.slide_name for h in hits[:2]} == set(ALIGNED)
    for h in hits[:2]:
        assert cd.overlap(h.box, cohort.planted[h.slide_name]) == 1.0
        assert h.score == pytest.approx(1.0, abs=2e-3)  # float16 storage
    assert hits[2].score < hits[1].score - 1e-4

    # With its own slide included, the query region itself comes first.
    own = cohort.backend.search(api.SearchRequest(
        str(cohort.index), MODEL, slide=request.slide, region=request.region, k=3,
        exclude_query_slide=False, tiles=TILES)).hits
    assert own[0].slide_name in {"gen-0.tif", *ALIGNED} and own[0].score == pytest.approx(1.0, abs=2e-3)
    assert "gen-0.tif" in {h.slide_name for h in own}


def test_each_query_tile_finds_its_counterpart_in_every_aligned_copy(cohort: Cohort) -> None:
    """Unmerged tile search: tile (dx, dy) of the patch finds tile (dx, dy) of each copy."""
    emb = cohort.backend.embeddings(api.SlideRef(str(cohort.path("gen-0.tif"))), MODEL, TILES, region=_region(cohort))
    qx, qy = PLANT_AT["gen-0.tif"]
    assert emb.n_tiles == 9
    with CohortIndex.open(cohort.index, read_only=True) as index:
        for (x, y), vector in zip(emb.coords, emb.vectors):
            hits = index.search(vector, 3, model_id=MODEL, merge=False, exclude_slides=[emb.slide_fingerprint])
            expected = {(n, PLANT_AT[n][0] + x - qx, PLANT_AT[n][1] + y - qy, TS, TS) for n in ALIGNED}
            assert {(h.slide_name, *h.box) for h in hits[:2]} == expected
            assert min(h.score for h in hits[:2]) > 0.998


def test_half_tile_shift_and_query_modes_figures(cohort: Cohort) -> None:
    """Figures, not thresholds: how the half-tile-shifted copy ranks, and tileset vs pooled.

    A place is counted as a copy when its box covers most of the planted box; test-tiny's
    tiles are all alike (cosines ~0.99), so merged places are large: the tile count is shown.
    """
    emb = cohort.backend.embeddings(api.SlideRef(str(cohort.path("gen-0.tif"))), MODEL, TILES, region=_region(cohort))
    k = 20
    ranks: dict[str, dict[str, tuple[int, float, int] | None]] = {}
    with CohortIndex.open(cohort.index, read_only=True) as index:
        for mode in ("tileset", "pooled"):
            hits = index.search_region(emb.vectors, k, model_id=MODEL, mode=mode,
                                       exclude_slides=[emb.slide_fingerprint])
            ranks[mode] = {n: _rank(hits, n, cohort.planted[n]) for n in (*ALIGNED, SHIFTED)}
            copies = {r[0] for r in ranks[mode].values() if r is not None}
            others = [h.score for i, h in enumerate(hits, 1) if i not in copies]
            scores = [h.score for h in hits]
            # merging joins the near-identical tiles of test-tiny into few large places
            assert scores == sorted(scores, reverse=True) and len(hits) >= 3
            shown = ", ".join(f"{n}: " + (f"rank {r[0]} score {r[1]:.4f} ({r[2]} tiles)" if r else f"not in top {k}")
                              for n, r in ranks[mode].items())
            best_other = f"{others[0]:.4f}" if others else "-"
            print(f"\n[figure] region query ({mode}, {cohort.info.n_vectors} tiles indexed): {shown}; "
                  f"best place without a copy: {best_other}")
        # Per tile, without merging: where does the shifted copy's nearest tile rank, among
        # all tiles but those of the query slide and the aligned copies?
        others = [str(cohort.path(n)) for n in ("gen-0.tif", *ALIGNED)]
        tile_ranks, on_copy, elsewhere = [], [], []
        for vector in emb.vectors:
            hits = index.search(vector, 200, model_id=MODEL, merge=False, exclude_slides=others)
            found = [(i, h.score) for i, h in enumerate(hits, 1)
                     if h.slide_name == SHIFTED and cd.overlap(cohort.planted[SHIFTED], h.box) >= 0.25]
            tile_ranks.append(found[0][0] if found else len(hits) + 1)
            on_copy.append(found[0][1] if found else np.nan)
            elsewhere.append(next(h.score for h in hits if h.slide_name != SHIFTED))
        print(f"[figure] half-tile-shifted copy, per query tile (unmerged): ranks {sorted(tile_ranks)}, "
              f"median {np.median(tile_ranks):.0f}; mean cosine {np.nanmean(on_copy):.4f} on the copy "
              f"vs {np.mean(elsewhere):.4f} best on copy-free slides")
    tileset = ranks["tileset"]
    assert tileset["gen-1.tif"] is not None and tileset["gen-2.tif"] is not None
    assert {tileset[n][0] for n in ALIGNED} == {1, 2}  # type: ignore[index]
    shifted = tileset[SHIFTED]
    if shifted is not None:  # sanity only: not an exact copy, so below the aligned ones
        assert shifted[0] > 2 and shifted[1] < 1.0 - 1e-4


def test_text_search_returns_ranked_hits(cohort: Cohort) -> None:
    result = cohort.backend.search(api.SearchRequest(str(cohort.index), MODEL, text="tumor cells with large nuclei",
                                                     k=8, tiles=TILES))
    hits = result.hits
    scores = [h.score for h in hits]
    assert len(hits) == 8 and scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores) and scores[0] > scores[-1]
    indexed = {f"gen-{i}.tif" for i in range(5)} | {"CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi"}
    assert {h.slide_name for h in hits} <= indexed
    again = cohort.backend.search(api.SearchRequest(str(cohort.index), MODEL, text="tumor cells with large nuclei",
                                                    k=8, tiles=TILES))
    assert again.hits == hits  # deterministic


def test_rebuild_adds_nothing_and_an_interrupted_build_resumes(cohort: Cohort) -> None:
    with CohortIndex.open(cohort.index, read_only=True) as index:
        before = [(s.slide_id, s.fingerprint) for s in index.slides()]
    again = cohort.backend.build_index(cohort.request())
    assert (again.n_slides, again.n_vectors) == (cohort.info.n_slides, cohort.info.n_vectors)
    with CohortIndex.open(cohort.index, read_only=True) as index:
        assert [(s.slide_id, s.fingerprint) for s in index.slides()] == before
        assert index.stats().n_dead == 0

    # Stop a fresh build after its fourth slide (the embeddings come from the cache), rerun.
    fresh = cohort.root / "resumed-index"
    cancel = threading.Event()

    def stop_after_three(p: api.Progress) -> None:
        if p.done == 3:
            cancel.set()

    with pytest.raises(CancelledError):
        cohort.backend.build_index(cohort.request(fresh), progress=stop_after_three, cancel=cancel)
    with CohortIndex.open(fresh, read_only=True) as index:
        first = [(s.slide_id, s.slide_name) for s in index.slides()]
    assert len(first) == 4  # whole slides only: slide 3 was finished before the check
    done = cohort.backend.build_index(cohort.request(fresh))
    assert (done.n_slides, done.n_vectors) == (cohort.info.n_slides, cohort.info.n_vectors)
    with CohortIndex.open(fresh, read_only=True) as index:
        assert [(s.slide_id, s.slide_name) for s in index.slides()][:4] == first  # kept, not re-added
    assert cd.tile_records(fresh) == cd.tile_records(cohort.index)


def test_a_rewritten_slide_replaces_its_vectors(cohort: Cohort, testdata: Path, tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("gen-1.tif", "gen-4.tif"):  # cached already: only the rewrite is embedded
        shutil.copy(cohort.path(name), folder / name)
    index_path = tmp_path / "index"
    request = api.IndexRequest((str(folder),), str(index_path), MODEL, TILES)
    first = cohort.backend.build_index(request)
    old = {r for r in cd.tile_records(index_path) if r[0] == "gen-4.tif"}

    # A different image at the same path: white left half, so fewer tissue tiles.
    image = cd.tissue_canvas(testdata, SIZE, seed=999)
    image[:, : SIZE[0] // 2] = 255
    cd.write_slide(folder / "gen-4.tif", image, tile=TS)
    second = cohort.backend.build_index(request)
    assert second.n_slides == first.n_slides == 2
    new = {r for r in cd.tile_records(index_path) if r[0] == "gen-4.tif"}
    assert new and new != old and all(x >= SIZE[0] // 2 - TS // 2 for _, x, _, _ in new)
    assert second.n_vectors == first.n_vectors - len(old) + len(new)
    with CohortIndex.open(index_path, read_only=True) as index:
        by_name = {s.slide_name: s for s in index.slides()}
        assert by_name["gen-4.tif"].fingerprint == slide_fingerprint(folder / "gen-4.tif")
        assert len(index) == second.n_vectors
        # the old version's tiles can no longer be found
        region = [h for h in index.search(np.ones(32, np.float32), 50, model_id=MODEL, merge=False)
                  if h.slide_name == "gen-4.tif"]
        assert all(h.box[0] >= SIZE[0] // 2 - TS // 2 for h in region)
