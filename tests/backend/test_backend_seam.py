"""``api.Backend`` is the one seam (issue 20): ``close()`` is part of it, ``HttpBackend`` speaks api
types only, every Backend call has a route, and a class map's writer fields cross the wire."""

from __future__ import annotations

import typing

import numpy as np

from backend import api
from backend.remote import HttpBackend
from backend.remote.wire import CALLS, decode, encode


def _backend_methods() -> list[str]:
    return sorted(n for n in dir(api.Backend) if not n.startswith("_") and callable(getattr(api.Backend, n)))


def test_close_is_part_of_the_protocol() -> None:
    from backend.local import LocalBackend

    assert "close" in _backend_methods()

    class NoClose:  # every other method of the protocol, but no close()
        pass

    for name in _backend_methods():
        if name != "close":
            setattr(NoClose, name, lambda self, *a, **k: None)
    assert not isinstance(NoClose(), api.Backend)
    with HttpBackend("http://127.0.0.1:9") as remote:  # no traffic until a call
        assert isinstance(remote, api.Backend)
    backend = LocalBackend(device="cpu")
    assert isinstance(backend, api.Backend)
    backend.close()


def test_http_backend_signatures_are_api_types() -> None:
    for name in _backend_methods():
        hints = typing.get_type_hints(getattr(HttpBackend, name))
        assert typing.Any not in hints.values(), (name, hints)
        want = typing.get_type_hints(getattr(api.Backend, name)).get("return")
        assert hints.get("return") == want, (name, hints.get("return"), want)


def test_every_backend_call_has_a_route() -> None:
    served = {c.method for c in CALLS.values()}
    assert set(_backend_methods()) - served == {"close", "list_models"}  # close is local; models is GET /v1/models


def test_a_class_map_result_keeps_its_writer_fields_over_the_wire() -> None:
    result = api.ZeroShotResult(
        labels=("tumor", "stroma"), class_map=np.array([[0, 1], [2, 3]], np.int32),
        probabilities=np.full((2, 2, 2), 0.5, np.float32), geometry=api.GridGeometry((2, 2), (64.0, 64.0), (31.5, 31.5)),
        random_weights=True, colors=((1, 2, 3), (4, 5, 6)), unknown_threshold=0.4, tile_extent=64.0,
        model_id="m@1", classifier="probe",
    )
    body, media = encode(result)
    back = decode(api.ZeroShotResult, body, media)
    for field in ("labels", "geometry", "random_weights", "colors", "unknown_threshold", "tile_extent", "model_id",
                  "classifier"):
        assert getattr(back, field) == getattr(result, field), field
    np.testing.assert_array_equal(back.class_map, result.class_map)
    assert back.class_colors() == ((1, 2, 3), (4, 5, 6))
    from backend.palette import class_colors

    plain = api.ZeroShotResult(("a", "b", "c"), result.class_map, result.probabilities, result.geometry, False)
    assert plain.class_colors() == class_colors(3)  # no colours given: the one palette's
