"""What travels between :class:`backend.remote.HttpBackend` and ``histoclip serve``.

One codec for both sides, derived from the request and result dataclasses of
:mod:`backend.api` (``dataclasses.fields`` and their type hints), so a new field or a new
request type needs no code here: only a line in :data:`CALLS`.

- Metadata is JSON. Dataclasses become objects of their fields, tuples lists, enums their value.
- Arrays never become JSON lists: each is replaced by ``{"$array": NAME}`` and sent as a
  binary ``.npy`` in a *bundle*: ``MAGIC``, a little-endian uint32 header length, the JSON
  header (``{"meta": ..., "arrays": {NAME: [offset, nbytes]}}``), then the ``.npy`` blobs.
  They are read back with ``np.load(allow_pickle=False, max_header_size=...)``: no object
  arrays, no pickles, no giant headers.
- Errors are JSON ``{"error": {"type", "message", "path", "cause"}}`` with an HTTP status;
  the client raises the same :mod:`backend.errors` class the local backend would.

This module imports numpy, :mod:`backend.api` and :mod:`backend.errors` only (the client's
promise: a laptop talking to a server loads no model code).
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import types
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from backend import api, errors

API_VERSION = "1.0"  # major.minor: a client refuses a server of another major version
JSON_TYPE = "application/json"
BUNDLE_TYPE = "application/vnd.histoclip.npy-bundle"
MAGIC = b"HCLPNPY1"
MAX_NPY_HEADER = 4096  # bytes of one .npy header; numpy's own default cap is 10,000
MAX_BUNDLE_HEADER = 1 << 20


# --- calls --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedRequest:
    """The arguments of :meth:`backend.api.Backend.embed_slide`, as one request on the wire."""

    slide: api.SlideRef
    model: str
    tiles: api.TileOptions = dataclasses.field(default_factory=api.TileOptions)


@dataclass(frozen=True)
class EncodeTextRequest:
    """Texts to embed with ``model`` (``POST /v1/encode/text``; batched across clients)."""

    model: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class EncodeImageRequest:
    """RGB crops to embed with ``model``: uint8 (B, H, W, 3) (``POST /v1/encode/image``)."""

    model: str
    images: np.ndarray


@dataclass(frozen=True)
class EncodeResult:
    vectors: np.ndarray  # (B, D) float32, unit norm
    model_id: str


@dataclass(frozen=True)
class Call:
    """One ``Backend`` method as an HTTP route ``POST /v1/calls/{route}``.

    ``bulk`` calls always become jobs (202); the others are answered directly when they
    finish within the client's wait (a relabel from the cache), else become jobs too.
    ``idempotent`` calls are retried by the client on 429/503 and connection errors.
    """

    route: str
    method: str
    request: type
    result: Any
    bulk: bool = False
    idempotent: bool = True


# A new Backend method is served with one line here and a one-line method on HttpBackend.
CALLS: dict[str, Call] = {
    c.route: c
    for c in (
        Call("embed", "embed_slide", EmbedRequest, api.EmbedResult, bulk=True),
        Call("zero-shot", "zero_shot", api.ZeroShotRequest, api.ZeroShotResult),
        Call("heatmap", "heatmap", api.HeatmapRequest, api.HeatmapResult),
        Call("caption", "caption", api.CaptionRequest, api.CaptionResult),
        Call("corpus-caption", "corpus_caption", api.CorpusCaptionRequest, api.CaptionResult),
        Call("ground", "ground", api.GroundingRequest, api.GroundingResult),
        Call("index", "build_index", api.IndexRequest, api.IndexInfo, bulk=True),
        Call("search", "search", api.SearchRequest, api.SearchResult),
        Call("slide-zero-shot", "slide_zero_shot", api.SlideZeroShotRequest, api.SlideZeroShotResult),
        Call("search-slides", "search_slides", api.SlideSearchRequest, api.SlideSearchResult),
        Call("refine", "refine", api.RefineRequest, api.ZeroShotResult),
        Call("classify", "classify", api.ClassifyRequest, api.ZeroShotResult),
        Call("save-classifier", "save_classifier", api.SaveClassifierRequest, api.ClassifierInfo, idempotent=False),
        Call("search-class", "search_class", api.ClassSearchRequest, api.SearchResult),
    )
}


# --- values <-> JSON + arrays --------------------------------------------------------------


def to_plain(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``obj`` as JSON-able values; arrays are moved into ``arrays`` and referenced by name."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj.value if isinstance(obj, Enum) else obj
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = obj
        return {"$array": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v, arrays) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v, arrays) for k, v in obj.items()}
    raise TypeError(f"cannot send a {type(obj).__name__} over the wire: {obj!r}")


def _bad(where: str, value: Any, expected: str) -> errors.InputError:
    return errors.InputError(f"{where}: expected {expected}, got {_short(value)}")


def from_plain(tp: Any, value: Any, arrays: dict[str, np.ndarray], where: str = "request") -> Any:
    """Rebuild a value of type ``tp`` from :func:`to_plain` output; a bad value is an
    :class:`~backend.errors.InputError` naming the field (``where``), what was expected and got."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(options) < len(get_args(tp)):
                return None
            raise _bad(where, value, " or ".join(_name(a) for a in options))
        last: errors.InputError | None = None
        for option in options:
            try:
                return from_plain(option, value, arrays, where)
            except errors.InputError as e:
                last = e
        assert last is not None
        raise last
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            raise _bad(where, value, "a list")
        args = get_args(tp)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [from_plain(args[0] if args else Any, v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _bad(where, value, f"a list of {len(args)} values")
            items = [from_plain(a, v, arrays, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        return tuple(items) if origin is tuple else items
    if tp is np.ndarray:
        if not (isinstance(value, dict) and isinstance(value.get("$array"), str) and value["$array"] in arrays):
            raise _bad(where, value, "a reference to a binary .npy array")
        return arrays[value["$array"]]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, arrays, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError as e:
            raise _bad(where, value, "one of " + ", ".join(repr(m.value) for m in tp)) from e
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(where, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(where, value, "an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _bad(where, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(where, value, "a string")
    raise TypeError(f"{where}: no wire form for type {tp!r}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _dataclass(tp: type, value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    if not isinstance(value, dict):
        raise _bad(where, value, f"an object ({tp.__name__})")
    hints = get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise errors.InputError(f"{where}: unknown field {unknown[0]!r} of {tp.__name__}; fields are {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = from_plain(hints[name], value[name], arrays, f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise errors.InputError(f"{where}: missing field {name!r} of {tp.__name__}")
    try:
        return tp(**kwargs)
    except errors.LimitExceededError as e:  # a type's own check (Region, TileSpec ...): say where
        raise errors.LimitExceededError(f"{where}: {e}") from e
    except errors.InputError as e:
        raise errors.InputError(f"{where}: {e}") from e


# --- bundles ---------------------------------------------------------------------------------


def pack(meta: Any, arrays: dict[str, np.ndarray]) -> bytes:
    """One body holding JSON ``meta`` and the ``.npy`` bytes of ``arrays``."""
    blobs, offsets, offset = [], {}, 0
    for name, array in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        blob = buf.getvalue()
        blobs.append(blob)
        offsets[name] = [offset, len(blob)]
        offset += len(blob)
    header = json.dumps({"meta": meta, "arrays": offsets}).encode("utf-8")
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *blobs])


def unpack(body: bytes) -> tuple[Any, dict[str, np.ndarray]]:
    """The ``meta`` and arrays of a :func:`pack` body; anything malformed is an InputError."""
    n = len(MAGIC) + 4
    if len(body) < n or body[: len(MAGIC)] != MAGIC:
        raise errors.InputError(f"array bundle: does not start with {MAGIC!r} ({len(body)} bytes)")
    (size,) = struct.unpack("<I", body[len(MAGIC) : n])
    if size > MAX_BUNDLE_HEADER or n + size > len(body):
        raise errors.InputError(f"array bundle: header of {size} bytes is too large or cut short")
    try:
        header = _json(body[n : n + size], "array bundle header")
        meta, offsets = header["meta"], header["arrays"]
    except (KeyError, TypeError) as e:
        raise errors.InputError(f"array bundle: unreadable JSON header (no {e})") from e
    if not isinstance(offsets, dict):
        raise errors.InputError(f"array bundle: header 'arrays' must map names to [offset, nbytes], got {_short(offsets)}")
    data = memoryview(body)[n + size :]
    arrays = {}
    for name, span in offsets.items():
        if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)):
            raise errors.InputError(f"array bundle: array {name[:64]!r}: expected [offset, nbytes], got {_short(span)}")
        offset, nbytes = span
        if not 0 <= offset <= offset + nbytes <= len(data):
            raise errors.InputError(f"array bundle: array {name[:64]!r} lies outside the body")
        arrays[name] = _load_npy(data[offset : offset + nbytes], name[:64])
    return meta, arrays


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _json(body: bytes | memoryview, where: str) -> Any:
    """Parsed JSON; malformed or absurdly nested JSON (Python's parser recurses) is an InputError."""
    try:
        return json.loads(bytes(body))
    except RecursionError as e:
        raise errors.InputError(f"{where}: JSON nested too deeply") from e
    except ValueError as e:
        raise errors.InputError(f"{where}: not JSON ({e})") from e


def _load_npy(blob: memoryview, name: str) -> np.ndarray:
    """One ``.npy`` of a bundle, its header checked against its size before numpy allocates
    anything: a header may claim a shape of petabytes over a few bytes of data."""
    buf = io.BytesIO(blob)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = read_header[version](buf, max_header_size=MAX_NPY_HEADER)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if expected != len(blob) - buf.tell():
            raise ValueError(f"its header claims shape {shape} of {dtype} ({expected:,} bytes) "
                             f"but {len(blob) - buf.tell():,} bytes follow")
        buf.seek(0)
        array = np.load(buf, allow_pickle=False, max_header_size=MAX_NPY_HEADER)
    except ValueError as e:
        raise errors.InputError(f"array bundle: array {name!r} is not a plain .npy ({e})") from e
    # Read from a buffer, numpy hands back a read-only view: a caller may write to a result.
    return array if array.flags.writeable else array.copy()


def encode(obj: Any) -> tuple[bytes, str]:
    """``obj`` as a body and its content type: JSON when it holds no array, else a bundle."""
    arrays: dict[str, np.ndarray] = {}
    plain = to_plain(obj, arrays)
    if not arrays:
        return json.dumps(plain).encode("utf-8"), JSON_TYPE
    return pack(plain, arrays), BUNDLE_TYPE


def decode(tp: Any, body: bytes, content_type: str, where: str = "result") -> Any:
    """The value of type ``tp`` in a body made by :func:`encode`."""
    if content_type.split(";")[0].strip() == BUNDLE_TYPE:
        plain, arrays = unpack(body)
    else:
        plain, arrays = _json(body, f"{where}: body"), {}
    return from_plain(tp, plain, arrays, where)


# --- errors ----------------------------------------------------------------------------------

class CallTimeoutError(errors.HistoclipError):
    """The server stopped a call that ran past its time limit (504; ``--call-timeout``)."""


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (CallTimeoutError, 504),
    (errors.LimitExceededError, 413),
    (errors.SlideNotFoundError, 404),
    (errors.UnknownModelError, 404),
    (errors.ModelMismatchError, 409),
    (errors.CancelledError, 409),
    (errors.WeightsNotFoundError, 503),
    (errors.HistoclipError, 422),
)


def error_to_wire(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for a backend error."""
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, errors.SlideError):
        body.update(path=str(exc.path), cause=exc.cause)
    return status, {"error": body}


def error_from_wire(payload: Any, status: int) -> errors.HistoclipError:
    """The :mod:`backend.errors` exception a server's error body stands for."""
    info = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(info, dict):
        return errors.HistoclipError(f"server answered {status} without an error description: {str(payload)[:200]}")
    name = str(info.get("type"))
    remote = {c.__name__: c for c in (RemoteError, AuthError, ApiVersionError, LimitError, JobInterruptedError,
                                      CallTimeoutError)}
    cls = remote.get(name) or getattr(errors, name, None)
    message = str(info.get("message", ""))
    if not (isinstance(cls, type) and issubclass(cls, errors.HistoclipError)):
        return errors.HistoclipError(f"server error {status} ({info.get('type')}): {message}")
    if issubclass(cls, errors.SlideError):
        return cls(str(info.get("path", "")), str(info.get("cause", message)))
    return cls(message)


class RemoteError(errors.HistoclipError):
    """Talking to a histoclip server failed (not the backend work itself)."""


class ServerUnreachableError(RemoteError):
    """No connection to the server (down, wrong URL, firewall, TLS refused)."""


class AuthError(RemoteError):
    """The server refused the token (401)."""


class ApiVersionError(RemoteError):
    """Client and server speak different major versions of the API."""


class LimitError(RemoteError):
    """The server's limits refused the request (413, 429 after retries)."""


class JobInterruptedError(RemoteError):
    """The server stopped (restart, crash) while the job ran; a rerun resumes from its cache."""


def check_version(server_version: str, where: str) -> None:
    """Refuse a server whose API major version differs from this client's."""
    if str(server_version).split(".")[0] != API_VERSION.split(".")[0]:
        raise ApiVersionError(
            f"{where}: server speaks API {server_version}, this client {API_VERSION}: "
            "upgrade the older of the two (pip install -U napari-histoclip)"
        )


__all__ = [
    "API_VERSION", "ApiVersionError", "AuthError", "BUNDLE_TYPE", "CALLS", "Call", "CallTimeoutError", "EmbedRequest",
    "EncodeImageRequest",
    "EncodeResult", "EncodeTextRequest", "JSON_TYPE",
    "JobInterruptedError", "LimitError", "RemoteError", "ServerUnreachableError", "check_version",
    "decode", "encode", "error_from_wire", "error_to_wire", "from_plain", "pack", "to_plain", "unpack",
]
