"""Test support shared by the tests and the benchmarks (never shipped, never imported by the
library): synthetic data, tiny local models, a fake backend, a server in a thread, mouse
drags on a napari canvas. Importable as ``tests.support`` with the repository root on the path
(pytest's ``pythonpath`` setting; ``python -m benchmarks.NAME`` from the root).

Fixtures stay in the ``conftest.py`` files; the helpers they and the tests share live here.
"""
