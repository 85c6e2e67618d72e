"""The IVF parameters the cohort index picks from its size (backend.index.faiss_index.choose_ivf_params):
the share of lists a query visits shrinks with the code length, so the bytes scanned a query stay
within the 512-d budget (BENCHMARKS.md, cohort search at 1536)."""

from __future__ import annotations

import pytest

from backend.errors import InputError
from backend.index.faiss_index import choose_ivf_params


@pytest.mark.parametrize(("dim", "nprobe"), [(32, 64), (512, 64), (768, 32), (1024, 32), (1536, 16)])
def test_nprobe_at_1m_vectors_follows_the_code_length(dim: int, nprobe: int) -> None:
    params = choose_ivf_params(1_000_000, dim)
    assert params.nlist == 1024 and params.nprobe == nprobe
    # the bytes of PQ codes one query scans never exceed the 512-d budget (1/16 of 1024 lists of 64 B codes)
    assert params.nprobe * (params.pq_m / 2) <= 64 * 64


def test_small_indexes_visit_at_least_8_lists_and_overrides_win() -> None:
    assert choose_ivf_params(100_000, 1536).nprobe == 8
    assert choose_ivf_params(5_000, 1536).nprobe == 8
    assert choose_ivf_params(1_000_000, 1536, nprobe=64, k_factor=32).nprobe == 64
    with pytest.raises(InputError, match="n=0"):
        choose_ivf_params(0, 512)


@pytest.mark.parametrize(("dim", "k_factor"), [(32, 64), (512, 64), (768, 64), (1536, 64), (2048, 64), (4096, 128)])
def test_k_factor_is_64_up_to_2048_dimensions_then_follows_the_code_length(dim: int, k_factor: int) -> None:
    # 64: the PQ candidates hold the true neighbours of isotropic clusters only from there, at
    # 512 and at 1536 dimensions (BENCHMARKS.md); the exact float16 stage then orders them
    assert choose_ivf_params(1_000_000, dim).k_factor == k_factor
    assert choose_ivf_params(1_000_000, dim, k_factor=8).k_factor == 8
