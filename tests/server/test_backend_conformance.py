"""One suite of Backend behaviour, run against LocalBackend and HttpBackend (a real server).

Each test runs once per backend and compares with a reference LocalBackend of its own cache:
the same arrays (exactly), the same captions and hits, the same error classes and messages,
progress that ends at the total, cancel that raises CancelledError.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend import api
from backend.errors import CancelledError, InputError, SlideNotFoundError, UnknownModelError
from backend.local import LocalBackend
from backend.remote import HttpBackend
from tests.support.server import TILES, running_server

pytestmark = pytest.mark.slow
LABELS = ("tumor", "stroma", "fat")
SLIDES = ("CMU-1-Small-Region.svs", "test3-DAPI-2-(387).ndpi")  # the two test slides with an mpp


@dataclass
class Subject:
    """A backend and how it names things: local paths, or the server's names."""

    kind: str
    backend: Any
    slides_dir: Path
    captioner_dir: Path
    index_dir: Path
    corpus_file: Path | None = None

    def corpus(self) -> str:
        assert self.corpus_file is not None
        return str(self.corpus_file) if self.kind == "local" else self.corpus_file.name

    def slide(self, name: str) -> api.SlideRef:
        return api.SlideRef(str(self.slides_dir / name) if self.kind == "local" else name)

    def captioner(self) -> str:
        return str(self.captioner_dir) if self.kind == "local" else self.captioner_dir.name

    def index(self, name: str) -> str:
        return str(self.index_dir / name) if self.kind == "local" else name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with LocalBackend(cache_dir=tmp_path_factory.mktemp("reference"), device="cpu") as backend:
        yield backend


CORPUS = ("dense fibrous stroma", "squamous epithelium", "adipose tissue", "tumour glands", "necrosis")


@pytest.fixture(scope="module")
def caption_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small caption corpus table with source and id columns, in a folder of its own."""
    path = tmp_path_factory.mktemp("corpora") / "captions.csv"
    lines = ["text,src,pid", *(f"{t},arch,{i}" for i, t in enumerate(CORPUS))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=["local", "http"])
def subject(request, tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, tiny_captioner: Path,
            caption_corpus: Path) -> Iterator[Subject]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "local":
        with LocalBackend(cache_dir=tmp / "cache", device="cpu") as backend:
            yield Subject("local", backend, slides_dir, tiny_captioner, tmp / "indexes", caption_corpus)
        return
    backend = LocalBackend(cache_dir=tmp / "cache", device="cpu")
    with running_server(tmp, (slides_dir,), corpus_roots=(caption_corpus.parent,)) as running:
        # The toy captioner's folder is the server's model root.
        running.state.bundles.roots = (tiny_captioner.parent.resolve(),)
        with HttpBackend(running.url, running.token) as client:
            yield Subject("http", client, slides_dir, tiny_captioner, tmp / "indexes", caption_corpus)
    backend.close()


def test_list_models(subject: Subject, reference: LocalBackend) -> None:
    assert subject.backend.list_models() == reference.list_models()


def test_embed_progress_then_cache(subject: Subject, reference: LocalBackend, cmu_slide: Path) -> None:
    seen: list[api.Progress] = []
    first = subject.backend.embed_slide(subject.slide(cmu_slide.name), "test-tiny", TILES, progress=seen.append)
    ref = reference.embed_slide(api.SlideRef(str(cmu_slide)), "test-tiny", TILES)
    assert first == replace(ref, from_cache=False)  # the reference is shared by both runs: cached the second time
    assert seen and seen[-1].done == seen[-1].total == first.n_tiles and all(isinstance(p, api.Progress) for p in seen)
    again = subject.backend.embed_slide(subject.slide(cmu_slide.name), "test-tiny", TILES)
    assert again.from_cache and again.n_tiles == first.n_tiles


def test_zero_shot_and_heatmap_equal(subject: Subject, reference: LocalBackend, cmu_slide: Path) -> None:
    box = api.Region.box(500, 500, 800, 800)
    for region, threshold in ((None, None), (box, 0.4)):
        req = api.ZeroShotRequest(subject.slide(cmu_slide.name), "test-tiny", LABELS, unknown_threshold=threshold,
                                  region=region, tiles=TILES, templates=("an image of {}",))
        got = subject.backend.zero_shot(req)
        ref = reference.zero_shot(api.ZeroShotRequest(api.SlideRef(str(cmu_slide)), "test-tiny", LABELS,
                                                      unknown_threshold=threshold, region=region, tiles=TILES,
                                                      templates=("an image of {}",)))
        assert got.labels == ref.labels and got.geometry == ref.geometry
        assert got.class_map.dtype == ref.class_map.dtype and np.array_equal(got.class_map, ref.class_map)
        assert np.array_equal(got.probabilities, ref.probabilities, equal_nan=True)
    got = subject.backend.heatmap(api.HeatmapRequest(subject.slide(cmu_slide.name), "test-tiny", "stroma", TILES))
    ref = reference.heatmap(api.HeatmapRequest(api.SlideRef(str(cmu_slide)), "test-tiny", "stroma", TILES))
    assert got.geometry == ref.geometry and np.array_equal(got.similarity, ref.similarity, equal_nan=True)


def test_slide_zero_shot_equal(subject: Subject, reference: LocalBackend, cmu_slide: Path) -> None:
    for pooling in ("topk", "mean"):
        req = api.SlideZeroShotRequest(subject.slide(cmu_slide.name), "test-tiny", LABELS, pooling=pooling, k=5,
                                       evidence=3, tiles=TILES)
        got = subject.backend.slide_zero_shot(req)
        ref = reference.slide_zero_shot(replace(req, slide=api.SlideRef(str(cmu_slide))))
        assert got == ref and got.pooling == pooling and len(got.evidence) == 3 * len(LABELS)
    with pytest.raises(InputError, match="pooling: 'max' is not a pooling; choose one of topk, mean, fraction"):
        subject.backend.slide_zero_shot(replace(req, pooling="max"))


def _tiles_of(backend: LocalBackend, slide: Path) -> int:
    return backend.embed_slide(api.SlideRef(str(slide)), "test-tiny", TILES).n_tiles


def test_caption_equal(subject: Subject, reference: LocalBackend, cmu_slide: Path, tiny_captioner: Path) -> None:
    regions = (api.Region.box(500, 500, 800, 800), api.Region.polygon([(600, 600), (1300, 700), (900, 1300)]))
    got = subject.backend.caption(api.CaptionRequest(subject.slide(cmu_slide.name), regions, subject.captioner(),
                                                     "test-tiny", beams=3, n_best=2, tiles=TILES))
    ref = reference.caption(api.CaptionRequest(api.SlideRef(str(cmu_slide)), regions, str(tiny_captioner), "test-tiny",
                                               beams=3, n_best=2, tiles=TILES))
    assert got == ref and len(got.captions) == 2 and len(got.captions[0].texts) == 2


def test_corpus_caption_and_grounding_equal(subject: Subject, reference: LocalBackend, cmu_slide: Path,
                                            caption_corpus: Path, tiny_captioner: Path) -> None:
    regions = (api.Region.box(500, 500, 800, 800), api.Region.polygon([(600, 600), (1300, 700), (900, 1300)]))
    got = subject.backend.corpus_caption(api.CorpusCaptionRequest(
        subject.slide(cmu_slide.name), regions, subject.corpus(), "test-tiny", n_best=2, source_column="src",
        id_column="pid", tiles=TILES))
    ref = reference.corpus_caption(api.CorpusCaptionRequest(
        api.SlideRef(str(cmu_slide)), regions, str(caption_corpus), "test-tiny", n_best=2, source_column="src",
        id_column="pid", tiles=TILES))
    assert got == ref and len(got.captions) == 2
    assert all(s[0].startswith("arch/") for c in got.captions for s in c.sources)
    region = api.Region.box(0, 0, 1600, 1600)
    for captioner in (None, subject.captioner()):
        req = api.GroundingRequest(subject.slide(cmu_slide.name), region, "tumor glands in desmoplastic stroma",
                                   model=None if captioner else "test-tiny", captioner=captioner, tiles=TILES)
        got = subject.backend.ground(req)
        ref = reference.ground(replace(req, slide=api.SlideRef(str(cmu_slide)),
                                       captioner=str(tiny_captioner) if captioner else None))
        assert (got.method, got.phrases, got.top_cells, got.geometry) == (ref.method, ref.phrases, ref.top_cells, ref.geometry)
        assert np.array_equal(got.maps, ref.maps, equal_nan=True)
    with pytest.raises(InputError, match="grounding caption: empty text"):
        subject.backend.ground(api.GroundingRequest(subject.slide(cmu_slide.name), region, " ", model="test-tiny",
                                                    tiles=TILES))
    missing = str(caption_corpus.parent / "nope.txt") if subject.kind == "local" else "nope.txt"
    with pytest.raises(InputError, match="nope.txt"):
        subject.backend.corpus_caption(api.CorpusCaptionRequest(subject.slide(cmu_slide.name), regions, missing,
                                                                "test-tiny", tiles=TILES))


def test_index_and_search_equal(subject: Subject, reference: LocalBackend, slides_dir: Path, tmp_path: Path) -> None:
    slides = tuple(str(slides_dir / s) if subject.kind == "local" else s for s in SLIDES)
    progress: list[api.Progress] = []
    info = subject.backend.build_index(api.IndexRequest(slides, subject.index("cohort"), "test-tiny", TILES),
                                       progress=progress.append)
    ref_info = reference.build_index(api.IndexRequest(tuple(str(slides_dir / s) for s in SLIDES), str(tmp_path / "ref"),
                                                      "test-tiny", TILES))
    assert (info.n_slides, info.n_vectors, info.model_id, info.failed) == (ref_info.n_slides, ref_info.n_vectors,
                                                                           ref_info.model_id, ())
    assert progress[-1].done == progress[-1].total == 2
    assert Path(info.index_path).name == "cohort" and Path(info.index_path).is_absolute() is (subject.kind == "local")
    got = subject.backend.search(api.SearchRequest(subject.index("cohort"), "test-tiny", text="tumor cells", k=5))
    ref = reference.search(api.SearchRequest(str(tmp_path / "ref"), "test-tiny", text="tumor cells", k=5))
    assert [(h.slide_name, h.box, h.score, h.n_tiles) for h in got.hits] == [(h.slide_name, h.box, h.score, h.n_tiles) for h in ref.hits]
    assert all(not Path(h.slide_path).is_absolute() for h in got.hits) == (subject.kind == "http")
    region = api.SearchRequest(subject.index("cohort"), "test-tiny", slide=subject.slide(SLIDES[0]),
                               region=api.Region.box(500, 500, 700, 700), k=3, tiles=TILES)
    got = subject.backend.search(region)
    assert got.hits and all(h.slide_name != Path(SLIDES[0]).stem for h in got.hits)
    with pytest.raises(InputError, match="search: give either a text query or a region of a slide, not both or neither"):
        subject.backend.search(api.SearchRequest(subject.index("cohort"), "test-tiny"))
    # "slides like this one": the same ranking and scores, the query slide left out
    got_slides = subject.backend.search_slides(api.SlideSearchRequest(subject.index("cohort"), subject.slide(SLIDES[0])))
    ref_slides = reference.search_slides(api.SlideSearchRequest(str(tmp_path / "ref"), api.SlideRef(str(slides_dir / SLIDES[0]))))
    as_tuples = [(h.slide_name, h.score, h.n_tiles) for h in got_slides.hits]
    assert as_tuples == [(h.slide_name, h.score, h.n_tiles) for h in ref_slides.hits]
    other = ref_info.n_vectors - _tiles_of(reference, slides_dir / SLIDES[0])
    assert [(name, n) for name, _, n in as_tuples] == [(SLIDES[1], other)]


def test_same_errors(subject: Subject, cmu_slide: Path) -> None:
    slide = subject.slide(cmu_slide.name)
    with pytest.raises(InputError, match=r"classes: zero-shot needs at least 2 classes, got .*'tumor'"):
        subject.backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", ("tumor",), tiles=TILES))
    with pytest.raises(InputError, match="template 'no slot'"):
        subject.backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", LABELS, templates=("no slot",), tiles=TILES))
    with pytest.raises(InputError, match="caption: no region given"):
        subject.backend.caption(api.CaptionRequest(slide, (), subject.captioner(), "test-tiny", tiles=TILES))
    with pytest.raises(UnknownModelError, match="no-such-model"):
        subject.backend.heatmap(api.HeatmapRequest(slide, "no-such-model", "q", TILES))
    with pytest.raises(SlideNotFoundError, match="missing.svs"):
        subject.backend.heatmap(api.HeatmapRequest(subject.slide("missing.svs"), "test-tiny", "q", TILES))
    with pytest.raises(UnknownModelError, match="no-captioner"):
        subject.backend.caption(api.CaptionRequest(slide, (api.Region.box(0, 0, 500, 500),),
                                                   str(subject.captioner_dir.parent / "no-captioner") if subject.kind == "local"
                                                   else "no-captioner", "test-tiny", tiles=TILES))
    with pytest.raises(InputError, match="covers no tissue tile"):
        subject.backend.zero_shot(api.ZeroShotRequest(slide, "test-tiny", LABELS, region=api.Region.box(0, 0, 10, 10),
                                                      tiles=TILES))


def test_cancel(subject: Subject, cmu_slide: Path) -> None:
    fine = api.TileOptions(tile_size=32, mpp=2.0)
    cancel = threading.Event()
    seen: list[api.Progress] = []

    def progress(p: api.Progress) -> None:
        seen.append(p)
        if p.done > 0:
            cancel.set()

    with pytest.raises(CancelledError, match="cancelled"):
        subject.backend.embed_slide(subject.slide(cmu_slide.name), "test-tiny", fine, progress=progress, cancel=cancel)
    assert seen and seen[-1].done < seen[-1].total
    already = threading.Event()
    already.set()
    with pytest.raises(CancelledError):
        subject.backend.zero_shot(api.ZeroShotRequest(subject.slide(cmu_slide.name), "test-tiny", LABELS, tiles=fine),
                                  cancel=already)
