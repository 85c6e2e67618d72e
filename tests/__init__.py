"""The test suite (a package so that ``tests.support`` is importable; see tests/support)."""
