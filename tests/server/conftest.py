"""Fixtures of the server and client tests (the helpers are in :mod:`tests.support.server`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import Running, running_server


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Iterator[Running]:
    """One server over the shared test slides, for the tests of a module."""
    tmp = tmp_path_factory.mktemp("server")
    with running_server(tmp, (slides_dir,)) as running:
        yield running
