"""Fixtures shared by the backend tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_faiss_thread() -> Iterator[None]:
    """Tiny indexes: FAISS's OpenMP threads only add contention on a shared 2-core machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def cmu_tiny_index(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path) -> str:
    """A cohort index of CMU-1 alone, test-tiny, 64 px tiles at 2 µm/px. Read it, never grow it."""
    from backend import api
    from backend.local import LocalBackend

    path = tmp_path_factory.mktemp("cmu-tiny-index") / "index"
    with LocalBackend(cache_dir=path.parent / "cache", device="cpu") as backend:
        backend.build_index(api.IndexRequest((str(cmu_slide),), str(path), "test-tiny",
                                             api.TileOptions(tile_size=64, mpp=2.0)))
    return str(path)


@pytest.fixture(scope="session")
def texture_model(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> str:
    """test-tiny fine-tuned on the planted textures (slide_level_data.fine_tune; ~2 min here):
    shared by the slide-level zero-shot, triage and slide search tests."""
    from tests.support.slide_level_data import fine_tune

    return str(fine_tune(testdata, tmp_path_factory.mktemp("texture-model")))
