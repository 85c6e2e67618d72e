"""The test suite's thread budget is set in one place (tests/conftest.py), not per module."""

from __future__ import annotations

import os
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_torch_uses_the_one_thread_budget() -> None:
    import torch

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


def test_no_test_module_sets_thread_counts_itself() -> None:
    setter = re.compile(r"^\s*(torch\.set_num_threads|faiss\.omp_set_num_threads)\(", re.M)
    offenders = [
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("*.py")
        if p.name != "conftest.py" and p != Path(__file__).resolve() and setter.search(p.read_text())
    ]
    assert offenders == []
