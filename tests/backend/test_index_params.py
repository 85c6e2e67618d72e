"""The IVF parameters the cohort index picks from its size (backend.index.faiss_index.choose_ivf_params):
the share of lists a query visits shrinks with the code length, so the bytes scanned a query stay
within the 512-d budget (BENCHMARKS.md, cohort search at 1536)."""

from __future__ import annotations

import pytest

from backend.errors import InputError
from backend.index.faiss_index import choose_ivf_params


@pytest.mark.parametrize(("dim", "nprobe"), [(32, 256), (512, 256), (768, 128), (1024, 128), (1536, 64)])
def test_nprobe_at_1m_vectors_follows_the_code_length(dim: int, nprobe: int) -> None:
    params = choose_ivf_params(1_000_000, dim)
    # 4 x sqrt(n) lists: k-means lists of clustered data are unequal, and smaller lists bound
    # what a query's big nearest lists cost (BENCHMARKS.md, 1M x 1536)
    assert params.nlist == 4096 and params.nprobe == nprobe
    assert params.n_train == 40 * 4096
    # the share of the index's PQ bytes one query scans never exceeds the 512-d budget (1/16 of
    # the lists of 64 B codes)
    assert params.nprobe / params.nlist * (params.pq_m / 2) <= 64 / 16


def test_lists_keep_39_training_vectors_and_the_training_sample_its_floor() -> None:
    assert choose_ivf_params(10_000, 512).nlist == 10_000 // 39
    assert choose_ivf_params(100_000, 512).n_train == 65_536
    assert choose_ivf_params(50_000, 512).n_train == 50_000


def test_small_indexes_visit_at_least_32_lists_and_overrides_win() -> None:
    assert choose_ivf_params(20_000, 1536).nprobe == 32
    assert choose_ivf_params(5_000, 1536).nprobe == 32
    assert choose_ivf_params(1_000, 512).nprobe == 1_000 // 39  # every list
    assert choose_ivf_params(1_000_000, 1536, nprobe=64, k_factor=32).nprobe == 64
    with pytest.raises(InputError, match="n=0"):
        choose_ivf_params(0, 512)


@pytest.mark.parametrize(("dim", "k_factor"), [(32, 64), (512, 64), (768, 64), (1536, 64), (2048, 64), (4096, 128)])
def test_k_factor_is_64_up_to_2048_dimensions_then_follows_the_code_length(dim: int, k_factor: int) -> None:
    # 64: the PQ candidates hold the true neighbours of isotropic clusters only from there, at
    # 512 and at 1536 dimensions (BENCHMARKS.md); the exact float16 stage then orders them
    assert choose_ivf_params(1_000_000, dim).k_factor == k_factor
    assert choose_ivf_params(1_000_000, dim, k_factor=8).k_factor == 8
