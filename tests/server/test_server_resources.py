"""The server localises the request fields declared in ``backend.server.resources`` (slides,
bundles, indexes, corpora, models) and nothing else: every call's request type has a
declaration, every declared field is resolved in its own catalog (a link out of a root or an
absolute path is refused), an undeclared field passes as sent, an undeclared type is refused."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import api
from backend.remote.wire import CALLS
from backend.server.resources import REQUEST_RESOURCES, Resource
from tests.support.fakes import FakeBackend

BOX = api.Region.box(0, 0, 64, 64)
# A valid client value for every field a request type requires, by field name.
REQUIRED = {
    "slide": api.SlideRef("cmu.svs"), "regions": (BOX,), "region": BOX, "labels": ("tumor", "stroma"),
    "caption": "tumor", "label": "tumor", "query": "tumor", "marks": (api.TileMarks("tumor", ((0, 0),)),),
}
# A valid client value for each kind of declared field (a name the server lists).
VALID = {
    Resource.SLIDE: "cmu.svs", Resource.SLIDES: ("cmu.svs",), Resource.MODEL: "test-tiny",
    Resource.BUNDLE: "clf", Resource.NEW_BUNDLE: "new-clf", Resource.INDEX: "idx",
    Resource.NEW_OR_INDEX: "new-idx", Resource.CORPUS: "captions.txt",
}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, cmu_slide: Path) -> Iterator[object]:
    """A server state whose every root holds a valid entry, and ``escape*`` links pointing out."""
    from backend.server import ServerConfig
    from backend.server.state import ServerState

    tmp = tmp_path_factory.mktemp("resources")
    outside = tmp / "outside"
    roots = {name: tmp / name for name in ("slides", "models", "indexes", "corpora")}
    for folder in [outside, *roots.values()]:
        folder.mkdir()
    shutil.copy(cmu_slide, roots["slides"] / "cmu.svs")
    shutil.copy(cmu_slide, outside / "cmu.svs")
    for folder, marker in ((roots["models"] / "clf", "histoclip.json"), (roots["indexes"] / "idx", "meta.sqlite"),
                           (outside / "bundle", "histoclip.json"), (outside / "index", "meta.sqlite")):
        folder.mkdir()
        (folder / marker).write_text("{}")
    for folder in (roots["corpora"], outside):
        (folder / "captions.txt").write_text("tumor\nstroma\n")
    os.symlink(outside / "cmu.svs", roots["slides"] / "escape.svs")
    os.symlink(outside / "bundle", roots["models"] / "escape")
    os.symlink(outside / "index", roots["indexes"] / "escape")
    os.symlink(outside / "captions.txt", roots["corpora"] / "escape.txt")
    config = ServerConfig(slide_roots=(roots["slides"],), model_roots=(roots["models"],),
                          index_roots=(roots["indexes"],), corpus_roots=(roots["corpora"],), state_dir=tmp / "state")
    st = ServerState(config, FakeBackend())
    st.outside = outside  # type: ignore[attr-defined]
    yield st
    st.close()


def sample(cls: type) -> object:
    """An instance of ``cls`` with every required field and every declared field valid."""
    declared = REQUEST_RESOURCES[cls]
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in declared:
            kwargs[f.name] = VALID[declared[f.name]]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if cls is api.SaveClassifierRequest and f.name == "slides":
                kwargs[f.name] = (api.SlideMarks(REQUIRED["slide"], REQUIRED["marks"]),)
            else:
                assert f.name in REQUIRED, f"{cls.__name__}.{f.name}: give this test a valid value for it"
                kwargs[f.name] = REQUIRED[f.name]
    return cls(**kwargs)


def declared_fields() -> list[tuple[type, str, Resource]]:
    return [(cls, name, kind) for cls, fields in REQUEST_RESOURCES.items() for name, kind in fields.items()]


def test_every_call_declares_its_resource_fields_and_they_exist() -> None:
    for call in CALLS.values():
        assert call.request in REQUEST_RESOURCES, f"{call.route}: {call.request.__name__} has no declaration"
    for cls, name, _ in declared_fields():
        assert name in {f.name for f in dataclasses.fields(cls)}, f"{cls.__name__}.{name}: no such field"


def test_declared_fields_become_paths_inside_their_roots(state) -> None:
    roots = {Resource.SLIDE: state.slides, Resource.SLIDES: state.slides, Resource.BUNDLE: state.bundles,
             Resource.NEW_BUNDLE: state.bundles, Resource.INDEX: state.indexes, Resource.NEW_OR_INDEX: state.indexes,
             Resource.CORPUS: state.corpora}
    for cls in (c for c, fields in REQUEST_RESOURCES.items() if fields):
        local = state.localize(sample(cls))
        for name, kind in REQUEST_RESOURCES[cls].items():
            value = getattr(local, name)
            if kind is Resource.MODEL:
                assert value == "test-tiny"  # a registry name stays a name
                continue
            for path in (value,) if isinstance(value, str) else value:
                root = str(roots[kind].roots[0])
                assert os.path.commonpath([path, root]) == root, (cls.__name__, name, path)
    search = state.localize(dataclasses.replace(sample(api.SearchRequest), text="/etc/passwd"))
    assert search.text == "/etc/passwd"  # not a declared field: as sent (it is a query text)
    assert search.index_path.endswith(f"{os.sep}idx")


@pytest.mark.parametrize(("cls", "name", "kind"), declared_fields(),
                         ids=[f"{c.__name__}.{n}" for c, n, _ in declared_fields()])
def test_every_declared_field_refuses_links_out_of_its_root_and_server_paths(state, cls, name, kind) -> None:
    escape = {Resource.SLIDE: "escape.svs", Resource.SLIDES: ("escape.svs",), Resource.CORPUS: "escape.txt"}
    absolute = {Resource.SLIDE: "cmu.svs", Resource.SLIDES: ("cmu.svs",), Resource.CORPUS: "captions.txt",
                Resource.NEW_OR_INDEX: "index", Resource.INDEX: "index"}.get(kind, "bundle")
    for value in (escape.get(kind, "escape"), str(state.outside / absolute) if isinstance(absolute, str)
                  else tuple(str(state.outside / a) for a in absolute)):
        request = dataclasses.replace(sample(cls), **{name: value})
        with pytest.raises(Exception) as caught:
            state.localize(request)
        shown = value if isinstance(value, str) else value[0]
        assert shown in str(caught.value) or Path(shown).name in str(caught.value), (cls.__name__, name, caught.value)


def test_a_new_request_type_is_localised_only_where_declared(state, monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass(frozen=True)
    class NotesRequest:
        slide: api.SlideRef
        index_path: str
        notes_path: str  # path-like, undeclared: the backend gets it as sent

    request = NotesRequest(api.SlideRef("cmu.svs"), "idx", "idx")
    with pytest.raises(TypeError, match="NotesRequest: not served; declare which of its fields"):
        state.localize(request)
    monkeypatch.setitem(REQUEST_RESOURCES, NotesRequest, {"index_path": Resource.INDEX})
    local = state.localize(request)
    assert local.notes_path == "idx"
    assert os.path.isabs(local.index_path) and local.index_path.endswith(f"{os.sep}idx")
    assert os.path.isabs(local.slide.path) and local.slide.path.endswith("cmu.svs")
