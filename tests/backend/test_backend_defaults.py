"""LocalBackend: defaults from what the data records, search with progress and cancel, the
"loading model" stage, and the slide mpp as a fallback."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from backend import api
from backend.errors import CancelledError, InputError, ModelMismatchError
from backend.local import LocalBackend

TILES = api.TileOptions(tile_size=64, mpp=2.0)
MODEL = "test-tiny"
BOX = api.Region.box(600, 600, 600, 600)



@pytest.fixture(scope="module")
def index(cmu_tiny_index: str) -> str:
    return cmu_tiny_index


@pytest.fixture()
def backend(tmp_path: Path) -> LocalBackend:
    with LocalBackend(cache_dir=tmp_path / "cache", device="cpu") as b:
        yield b


def test_search_defaults_to_the_index_model_and_tiles(backend: LocalBackend, index: str, cmu_slide: Path) -> None:
    explicit = backend.search(api.SearchRequest(index, MODEL, slide=api.SlideRef(str(cmu_slide)), region=BOX,
                                                exclude_query_slide=False, tiles=TILES))
    recorded = backend.search(api.SearchRequest(index, slide=api.SlideRef(str(cmu_slide)), region=BOX,
                                                exclude_query_slide=False))
    assert recorded == explicit and recorded.hits[0].slide_name == cmu_slide.name
    text = backend.search(api.SearchRequest(index, text="tumor", k=3))
    assert text == backend.search(api.SearchRequest(index, MODEL, text="tumor", k=3))


def test_search_refuses_another_model_or_other_tiles(
    backend: LocalBackend, index: str, cmu_slide: Path, tmp_path: Path
) -> None:
    from backend.models import save_bundle

    other = str(save_bundle(backend.model(MODEL), tmp_path / "other-clip", name="other-clip"))
    with pytest.raises(ModelMismatchError, match=r"was made with model 'test-tiny', but model .*other-clip"):
        backend.search(api.SearchRequest(index, other, text="tumor"))
    with pytest.raises(InputError, match=r"the index's tiles are t64-mpp2-o0-mt0.5, the query's would be t224"):
        backend.search(api.SearchRequest(index, slide=api.SlideRef(str(cmu_slide)), region=BOX,
                                         tiles=api.TileOptions(tile_size=224, mpp=2.0)))


def test_search_reports_loading_and_honours_cancel(
    backend: LocalBackend, index: str, cmu_slide: Path, tmp_path: Path
) -> None:
    seen: list[api.Progress] = []
    cancel = threading.Event()

    def stop_once_loading(p: api.Progress) -> None:
        seen.append(p)
        if p.stage.startswith("loading model"):
            cancel.set()  # the user presses Cancel while the model loads

    with pytest.raises(CancelledError, match="loading model test-tiny"):
        backend.search(api.SearchRequest(index, text="tumor"), progress=stop_once_loading, cancel=cancel)
    assert seen[0] == api.Progress(0, 0, "loading model test-tiny")
    # The load is kept: the next call has no loading stage and runs.
    seen.clear()
    assert backend.search(api.SearchRequest(index, text="tumor"), progress=seen.append).hits
    assert not any(p.stage.startswith("loading") for p in seen)

    # Cancel while the query region is being embedded (a region of a slide not in the cache).
    cancel = threading.Event()

    def stop_when_encoding(p: api.Progress) -> None:
        if p.stage.startswith("encoding"):
            cancel.set()

    region = api.SearchRequest(index, slide=api.SlideRef(str(cmu_slide)), region=api.Region.box(0, 0, 2000, 2900))
    with LocalBackend(cache_dir=tmp_path / "other-cache", device="cpu", batch_size=4) as fresh:
        with pytest.raises(CancelledError):
            fresh.search(region, progress=stop_when_encoding, cancel=cancel)


def test_embedding_reports_the_model_load_first(backend: LocalBackend, cmu_slide: Path) -> None:
    seen: list[api.Progress] = []
    backend.embed_slide(api.SlideRef(str(cmu_slide)), MODEL, TILES, progress=seen.append)
    assert seen[0].stage == "loading model test-tiny" and seen[0].total == 0
    assert seen[1].stage.startswith("encoding CMU-1-Small-Region.svs")
    assert seen[-1].done == seen[-1].total > 0


@pytest.mark.slow
def test_caption_defaults_to_the_bundles_clip_model(
    backend: LocalBackend, cmu_slide: Path, tiny_captioner: Path, tmp_path: Path
) -> None:
    slide = api.SlideRef(str(cmu_slide))
    implicit = backend.caption(api.CaptionRequest(slide, (BOX,), str(tiny_captioner), tiles=TILES))
    explicit = backend.caption(api.CaptionRequest(slide, (BOX,), str(tiny_captioner), MODEL, tiles=TILES))
    assert implicit == explicit and implicit.captions[0].texts
    from backend.models import save_bundle

    other = str(save_bundle(backend.model(MODEL), tmp_path / "other-clip", name="other-clip"))
    with pytest.raises(ModelMismatchError, match="captioner"):
        backend.caption(api.CaptionRequest(slide, (BOX,), str(tiny_captioner), other, tiles=TILES))


def test_a_given_slide_mpp_never_overrides_the_metadata(backend: LocalBackend, cmu_slide: Path) -> None:
    """CMU-1 records 0.499 µm/px: a user's 1.0 is for slides without one, so it changes nothing."""
    own = backend.heatmap(api.HeatmapRequest(api.SlideRef(str(cmu_slide)), MODEL, "nuclei", tiles=TILES))
    given = backend.heatmap(api.HeatmapRequest(api.SlideRef(str(cmu_slide), 1.0), MODEL, "nuclei", tiles=TILES))
    assert given.geometry == own.geometry
    np.testing.assert_array_equal(given.similarity, own.similarity)


def test_tile_options_to_spec_is_the_one_conversion() -> None:
    from backend.slides import TileSpec

    assert api.TileOptions(64, None, 0.25).to_spec() == TileSpec(tile_size=64, mpp=None, min_tissue=0.25)
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "backend").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "def _spec(" not in text and "import _spec" not in text, path
