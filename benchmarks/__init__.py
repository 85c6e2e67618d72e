"""Benchmarks, run from the repository root as ``python -m benchmarks.NAME`` (figures in
BENCHMARKS.md); they share test data and helpers with the tests through ``tests.support``."""
