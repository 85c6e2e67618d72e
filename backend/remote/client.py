"""``HttpBackend``: the :class:`backend.api.Backend` of a ``histoclip serve`` server, over httpx.

Slides are named by the server's ids: ``SlideRef(path=ID)`` with an id (or the relative name)
from :meth:`HttpBackend.slides`; ``index_path``, ``captioner`` and bundle models likewise name
what the server lists (:meth:`HttpBackend.indexes`, :meth:`HttpBackend.capabilities`).

Each call is ``POST /v1/calls/ROUTE``. A short one (a relabel or heatmap from the cache, a
search) is answered at once; a long one becomes a job: the client follows its server-sent
events (progress callbacks), sends ``DELETE`` when the cancel event is set, reattaches with
``Last-Event-ID`` when the stream drops, and fetches the result at the end. Idempotent calls
are retried with backoff on 429/503 and connection errors. The client verifies TLS
certificates (``verify=`` takes a CA bundle path for a private CA).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np

from backend import api
from backend.errors import CancelledError, LimitExceededError
from backend.remote.wire import (
    API_VERSION,
    CALLS,
    JSON_TYPE,
    AuthError,
    EmbedRequest,
    EncodeImageRequest,
    EncodeResult,
    EncodeTextRequest,
    LimitError,
    RemoteError,
    ServerUnreachableError,
    check_version,
    decode,
    encode,
    error_from_wire,
)

TOKEN_ENV = "HISTOCLIP_TOKEN"


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any, int | None]]:
    """``(event, data, id)`` of a server-sent event stream; comments come as ``("ping", None, None)``."""
    kind = "message"
    data: list[str] = []
    eid: int | None = None
    for line in lines:
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data)), eid
            kind, data, eid = "message", [], None
        elif line.startswith(":"):
            yield "ping", None, None
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id" and value.isdigit():
                eid = int(value)


class HttpBackend:
    """A :class:`backend.api.Backend` served by ``histoclip serve`` at ``url``.

    Parameters
    ----------
    url
        ``https://gpu-server:8443`` (or ``http://127.0.0.1:8765`` on one machine).
    token
        The bearer token (default: ``$HISTOCLIP_TOKEN``).
    verify
        True (the system's CA store), or the path of a CA bundle for a private CA.
    timeout, connect_timeout
        Seconds to wait for an answer (per read) and for a connection.
    retries
        Extra attempts of an idempotent request on 429, 503 and connection errors.
    wait_s
        How long the server may take over a call before answering with a job instead.

    No network traffic happens until the first call. Safe to use from several threads.
    """

    def __init__(self, url: str, token: str | None = None, *, verify: bool | str = True, timeout: float = 60.0,
                 connect_timeout: float = 5.0, retries: int = 4, wait_s: float = 1.0, backoff_s: float = 0.25) -> None:
        if not url.startswith(("http://", "https://")):
            from backend.errors import InputError

            raise InputError(f"server URL {url!r}: must start with http:// or https://")
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["X-Histoclip-Api"] = API_VERSION
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.retries, self.wait_s, self.backoff_s = int(retries), float(wait_s), float(backoff_s)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout, verify=verify)
        self._checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the token
        return f"HttpBackend({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, idempotent: bool = True, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # not sent: safe to retry
                if last:
                    raise ServerUnreachableError(f"cannot reach the histoclip server at {self.url} ({e}); is "
                                                 "'histoclip serve' running there, and the URL right?") from e
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                if last or not idempotent:
                    raise ServerUnreachableError(f"the connection to {self.url} broke during {method} {path} ({e})") from e
            except httpx.TimeoutException as e:
                raise RemoteError(f"{self.url}: no answer to {method} {path} within {self.timeout.read} s") from e
            else:
                if r.status_code not in (429, 503) or last or not idempotent:
                    return r
                retry_after = r.headers.get("retry-after", "")
                if retry_after.isdigit():
                    time.sleep(min(float(retry_after), 30.0))
                    continue
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _error(self, r: httpx.Response) -> Exception:
        try:
            payload = r.json()
        except ValueError:
            payload = r.text[:200]
        if r.status_code == 401:
            return AuthError(f"{self.url} refused the token (401): set ${TOKEN_ENV} or pass token=; a server admin "
                             "makes one with 'histoclip serve --add-token NAME'")
        err = error_from_wire(payload, r.status_code)
        if r.status_code in (413, 429) and not isinstance(err, LimitError | LimitExceededError):  # the local class
            return LimitError(f"{self.url}: {err}")
        return err

    def _get(self, path: str) -> httpx.Response:
        self._check_version()
        r = self._request("GET", path)
        if r.status_code != 200:
            raise self._error(r)
        return r

    def _check_version(self) -> None:
        with self._lock:
            if self._checked:
                return
        r = self._request("GET", "/v1/health")
        if r.status_code != 200:
            raise RemoteError(f"{self.url}/v1/health answered {r.status_code}: is this a histoclip server (API {API_VERSION})?")
        try:
            version = r.json()["api_version"]
        except (ValueError, KeyError, TypeError) as e:
            raise RemoteError(f"{self.url}/v1/health: not a histoclip server's answer") from e
        check_version(version, self.url)
        with self._lock:
            self._checked = True

    # --- calls and jobs ---------------------------------------------------------------------

    def _call(self, route: str, request: Any, progress: api.ProgressCallback | None,
              cancel: threading.Event | None) -> Any:
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"{route}: cancelled before it was sent")
        spec = CALLS[route]
        self._check_version()
        body, media = encode(request)
        r = self._request("POST", f"/v1/calls/{route}", idempotent=spec.idempotent, content=body,
                          headers={"Content-Type": media, "Prefer": f"wait={self.wait_s}"})
        if r.status_code == 200:
            return decode(spec.result, r.content, r.headers.get("content-type", JSON_TYPE), where=route)
        if r.status_code == 202:
            return self.wait_for_job(r.json()["id"], progress=progress, cancel=cancel)
        raise self._error(r)

    def wait_for_job(self, job_id: str, *, progress: api.ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> Any:
        """Follow job ``job_id`` to its end (progress, cancel, reattaching when the stream drops)
        and return its result; also for a job started by another client of the same token."""
        last, sent_cancel, failures = 0, False, 0
        while True:
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)},
                                       timeout=httpx.Timeout(self.timeout.read, connect=self.timeout.connect, read=10.0)) as r:
                    if r.status_code != 200:
                        r.read()
                        raise self._error(r)
                    for kind, data, eid in _sse(r.iter_lines()):
                        failures = 0
                        if cancel is not None and cancel.is_set() and not sent_cancel:
                            self._request("DELETE", f"/v1/jobs/{job_id}")
                            sent_cancel = True
                        last = eid or last
                        if kind == "progress" and progress is not None:
                            progress(api.Progress(int(data["done"]), int(data["total"]), str(data["stage"])))
                        elif kind == "end":
                            return self._result(job_id, data)
            except httpx.TransportError as e:  # dropped stream or a restarting server: reattach
                failures += 1
                if failures > self.retries:
                    raise ServerUnreachableError(f"lost job {job_id} on {self.url}: the event stream broke "
                                                 f"{failures} times ({e}); reattach with wait_for_job({job_id!r})") from e
                time.sleep(self.backoff_s * 2**failures)

    def _result(self, job_id: str, record: dict[str, Any]) -> Any:
        spec = CALLS.get(str(record.get("call")))
        r = self._request("GET", f"/v1/jobs/{job_id}/result")
        if r.status_code != 200 or spec is None:
            raise self._error(r)
        return decode(spec.result, r.content, r.headers.get("content-type", JSON_TYPE), where=spec.route)

    # --- the server's catalog ----------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        return self._get("/v1/capabilities").json()

    def slides(self) -> list[dict[str, Any]]:
        """The server's slides: ``id``, ``name`` (path relative to its root), ``bytes``."""
        return self._get("/v1/slides").json()

    def slide_info(self, slide_id: str) -> dict[str, Any]:
        """One slide's ``mpp``, ``levels`` (w, h) and ``fingerprint`` besides its listing."""
        from urllib.parse import quote

        return self._get(f"/v1/slides/{quote(slide_id, safe='')}").json()

    def thumbnail_png(self, slide_id: str, size: int = 1024) -> bytes:
        """A PNG overview of the slide, ``size`` pixels on its long side (for outputs and previews)."""
        from urllib.parse import quote

        return self._get(f"/v1/slides/{quote(slide_id, safe='')}/thumbnail?size={int(size)}").content

    def read_region(self, slide_id: str, level: int, location: tuple[int, int], size: tuple[int, int], *,
                    format: str = "png") -> np.ndarray:
        """Display pixels of the server's slide: ``(h, w, 3)`` uint8 RGB of ``size`` (w, h) pixels of
        ``level`` whose top-left is the level-0 pixel ``location`` (``format`` png: lossless, or jpeg)."""
        import io
        from urllib.parse import quote

        from PIL import Image

        (x, y), (w, h) = location, size
        r = self._get(f"/v1/slides/{quote(slide_id, safe='')}/region?level={int(level)}&x={int(x)}&y={int(y)}"
                      f"&w={int(w)}&h={int(h)}&format={format}")
        with Image.open(io.BytesIO(r.content)) as image:
            return np.asarray(image.convert("RGB"))

    def indexes(self) -> list[dict[str, Any]]:
        return self._get("/v1/indexes").json()

    def jobs(self) -> list[dict[str, Any]]:
        """The records of this token's jobs (queued, running, done, interrupted ...)."""
        return self._get("/v1/jobs").json()

    # --- encoders (not in the Backend interface) ---------------------------------------------

    def _encode(self, kind: str, request: EncodeTextRequest | EncodeImageRequest) -> EncodeResult:
        self._check_version()
        body, media = encode(request)
        r = self._request("POST", f"/v1/encode/{kind}", content=body, headers={"Content-Type": media})
        if r.status_code != 200:
            raise self._error(r)
        return decode(EncodeResult, r.content, r.headers.get("content-type", JSON_TYPE), where=f"encode-{kind}")

    def encode_texts(self, model: str, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings (N, D) float32 of ``texts`` by the server's ``model``."""
        return self._encode("text", EncodeTextRequest(model, tuple(texts))).vectors

    def encode_images(self, model: str, images: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings (B, D) of uint8 RGB crops (B, H, W, 3) or one (H, W, 3)."""
        return self._encode("image", EncodeImageRequest(model, np.asarray(images))).vectors

    # --- the Backend interface ---------------------------------------------------------------

    def list_models(self) -> list[api.ModelInfo]:
        r = self._get("/v1/models")
        return decode(list[api.ModelInfo], r.content, r.headers.get("content-type", JSON_TYPE), where="models")

    def embed_slide(self, slide: api.SlideRef, model: str, tiles: api.TileOptions = api.TileOptions(), *,
                    progress: api.ProgressCallback | None = None, cancel: threading.Event | None = None) -> api.EmbedResult:
        return self._call("embed", EmbedRequest(slide, model, tiles), progress, cancel)

    def zero_shot(self, request: api.ZeroShotRequest, *, progress: api.ProgressCallback | None = None,
                  cancel: threading.Event | None = None) -> api.ZeroShotResult:
        return self._call("zero-shot", request, progress, cancel)

    def heatmap(self, request: api.HeatmapRequest, *, progress: api.ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> api.HeatmapResult:
        return self._call("heatmap", request, progress, cancel)

    def caption(self, request: api.CaptionRequest, *, progress: api.ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> api.CaptionResult:
        return self._call("caption", request, progress, cancel)

    def corpus_caption(self, request: api.CorpusCaptionRequest, *, progress: api.ProgressCallback | None = None,
                       cancel: threading.Event | None = None) -> api.CaptionResult:
        return self._call("corpus-caption", request, progress, cancel)

    def ground(self, request: api.GroundingRequest, *, progress: api.ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> api.GroundingResult:
        return self._call("ground", request, progress, cancel)

    def build_index(self, request: api.IndexRequest, *, progress: api.ProgressCallback | None = None,
                    cancel: threading.Event | None = None) -> api.IndexInfo:
        return self._call("index", request, progress, cancel)

    def search(self, request: api.SearchRequest, *, progress: api.ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> api.SearchResult:
        return self._call("search", request, progress, cancel)

    def slide_zero_shot(self, request: api.SlideZeroShotRequest, *, progress: api.ProgressCallback | None = None,
                        cancel: threading.Event | None = None) -> api.SlideZeroShotResult:
        return self._call("slide-zero-shot", request, progress, cancel)

    def search_slides(self, request: api.SlideSearchRequest, *, progress: api.ProgressCallback | None = None,
                      cancel: threading.Event | None = None) -> api.SlideSearchResult:
        return self._call("search-slides", request, progress, cancel)

    def refine(self, request: api.RefineRequest, *, progress: api.ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> api.ZeroShotResult:
        return self._call("refine", request, progress, cancel)

    def classify(self, request: api.ClassifyRequest, *, progress: api.ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> api.ZeroShotResult:
        return self._call("classify", request, progress, cancel)

    def save_classifier(self, request: api.SaveClassifierRequest, *, progress: api.ProgressCallback | None = None,
                        cancel: threading.Event | None = None) -> api.ClassifierInfo:
        """``request.path`` is a plain name: the bundle goes in the server's first ``--models`` folder."""
        return self._call("save-classifier", request, progress, cancel)

    def search_class(self, request: api.ClassSearchRequest) -> api.SearchResult:
        return self._call("search-class", request, None, None)
