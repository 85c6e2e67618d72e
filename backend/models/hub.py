"""The one place that may touch the network: fetching model files from the Hugging Face hub.

Files are looked up in the local hub cache first (``HF_HUB_CACHE``, else ``$HF_HOME/hub``,
read when called, so a changed environment is honoured in-process); only files missing
from it are downloaded. Offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable, a
missing file raises one ``WeightsNotFoundError`` that names the repository, the missing
files and the ways to work offline, instead of open_clip's fallback to random weights or
huggingface_hub's ~20 s of retries.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from backend.errors import ModelError, WeightsNotFoundError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0  # a reachable hub answers a TCP connect well within this
_TRUE = {"1", "true", "yes", "on"}
_PROXY_ENVS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


@dataclass(frozen=True)
class HubRequest:
    """Files wanted from one hub repository.

    ``required`` maps a slot name to alternative file names in order of preference (e.g.
    ``{"weights": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")}``);
    ``optional`` lists files used when present.
    """

    repo_id: str
    required: Mapping[str, tuple[str, ...]]
    optional: tuple[str, ...] = ()
    revision: str | None = None
    what: str = field(default="", compare=False)  # for messages: the model name asking
    gated: bool = field(default=False, compare=False)  # the card says: accept terms, log in
    env_var: str = field(default="", compare=False)  # the variable that points at local weights


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache directory: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, or the default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now or was at import."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the endpoint's host opens within ``timeout`` seconds.

    Behind a proxy the hub's host is not dialled directly, so this says True and leaves the
    verdict to the download itself.
    """
    if any(os.environ.get(v) for v in _PROXY_ENVS):
        return True
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(repo_id: str, filename: str, cache_dir: Path, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir), revision=revision)
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found)
    return None


# The first sentence of a missing-weights message, which the dock shows as a toast: the model,
# the cause and the remedy, within about 80 characters ({what}: the model's name).
HEAD_OFFLINE = "{what}: not on disk and offline: unset HF_HUB_OFFLINE to download it. "
HEAD_UNREACHABLE = "{what}: not on disk, hub unreachable: connect, or use local weights. "
HEAD_FAILED = "{what}: download failed: check the network, or use local weights. "


def _how_to_fix(repo_id: str, env_var: str = "") -> str:
    local = (
        f"point at local weights: {env_var}=/path/to/folder-or-weights-file"
        if env_var
        else "point at local weights: a model bundle directory (`histoclip ... --model /path/to/bundle`)"
    )
    return (
        "To use it: run once with network access (HF_HUB_OFFLINE unset) to fill the cache; or "
        f"pre-populate the Hugging Face cache on another machine (`hf download {repo_id}`) and copy it "
        f"(set HF_HOME / HF_HUB_CACHE to where it is); or {local}."
    )


def gated_message(repo_id: str, endpoint: str | None = None) -> str:
    """What to do about a gated repository (the cause and remedy first)."""
    url = f"{(endpoint or hub_endpoint()).rstrip('/')}/{repo_id}"
    return (
        f"Gated model: accept its terms on the hub, then log in (`hf auth login`/HF_TOKEN): {url} . "
        f"Hub repository {repo_id} is gated: open {url} while logged in, accept the terms, then log in on "
        "this machine with `hf auth login` or set HF_TOKEN to a read token, and retry"
    )


def _missing_message(request: HubRequest, missing: list[tuple[str, ...]], cache_dir: Path, why: str, head: str) -> str:
    listed = "; ".join(" or ".join(alts) for alts in missing)
    who = "It " if request.what else f"Repository {request.repo_id} "
    at = f" at revision {request.revision}" if request.revision else ""
    gated = (
        f" Its weights are gated: accept the terms on {hub_endpoint()}/{request.repo_id} and log in "
        "(`hf auth login` or HF_TOKEN) before downloading."
        if request.gated
        else ""
    )
    return (
        f"{head.format(what=request.what or request.repo_id)}{who}needs files from the Hugging Face hub repository "
        f"{request.repo_id}{at} that are not in "
        f"the local cache {cache_dir}: {listed}. {why} Weights are never replaced by random ones.{gated} "
        + _how_to_fix(request.repo_id, request.env_var)
    )


def fetch(
    request: HubRequest,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    endpoint: str | None = None,
) -> dict[str, Path]:
    """Local paths of a repository's files, downloading only what the cache lacks.

    Parameters
    ----------
    request
        The repository and the files wanted.
    cache_dir
        Hub cache directory (default: ``hub_cache_dir()``).
    offline
        Force offline / online; ``None`` reads ``HF_HUB_OFFLINE``.
    endpoint
        Hub URL (default ``$HF_ENDPOINT`` or https://huggingface.co).

    Returns
    -------
    dict[str, Path]
        Each required slot name and each optional file name found -> its local path.

    Raises
    ------
    WeightsNotFoundError
        A required file is neither cached nor downloadable (offline, hub unreachable).
    ModelError
        The repository does not exist, is gated, or lacks a required file.
    """
    cache = hub_cache_dir(cache_dir)
    found: dict[str, Path] = {}
    missing_slots: dict[str, tuple[str, ...]] = {}
    for slot, alternatives in request.required.items():
        path = next((p for f in alternatives if (p := _cached(request.repo_id, f, cache, request.revision))), None)
        if path is None:
            missing_slots[slot] = alternatives
        else:
            found[slot] = path
    for name in request.optional:
        if (path := _cached(request.repo_id, name, cache, request.revision)) is not None:
            found[name] = path
    if not missing_slots:
        return found  # all required files cached: no network at all

    offline = is_offline() if offline is None else offline
    if offline:
        raise WeightsNotFoundError(
            _missing_message(
                request, list(missing_slots.values()), cache, "HF_HUB_OFFLINE is set, so nothing was downloaded.",
                HEAD_OFFLINE,
            )
        )
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    start = time.monotonic()
    if not hub_reachable(endpoint):
        waited = time.monotonic() - start
        raise WeightsNotFoundError(
            _missing_message(
                request,
                list(missing_slots.values()),
                cache,
                f"The hub at {endpoint} could not be reached (no connection within {waited:.1f} s); "
                "set HF_HUB_OFFLINE=1 to skip this check when working offline.",
                HEAD_UNREACHABLE,
            )
        )
    for slot, alternatives in missing_slots.items():
        found[slot] = _download_first(request, alternatives, cache, endpoint)
    for name in request.optional:
        if name not in found:
            try:
                found[name] = _download(request, name, cache, endpoint)
            except FileNotFoundError:
                pass  # optional: the repository does not have it
    return found


def _download_first(request: HubRequest, alternatives: tuple[str, ...], cache: Path, endpoint: str) -> Path:
    for name in alternatives:
        try:
            return _download(request, name, cache, endpoint)
        except FileNotFoundError:
            continue
    raise ModelError(
        f"hub repository {request.repo_id} has none of {', '.join(alternatives)}"
        + (f" (needed by model {request.what!r})" if request.what else "")
        + "; is it the right kind of repository for this model?"
    )


def _download(request: HubRequest, filename: str, cache: Path, endpoint: str) -> Path:
    """Download one file; ``FileNotFoundError`` when the repository has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = request.repo_id
    try:
        return Path(
            hf_hub_download(
                repo_id=repo,
                filename=filename,
                revision=request.revision,
                cache_dir=str(cache),
                endpoint=endpoint,
                etag_timeout=PROBE_TIMEOUT_S * 3,
            )
        )
    except GatedRepoError as e:
        raise ModelError(gated_message(repo, endpoint)) from e
    except RepositoryNotFoundError as e:
        if request.gated:  # a gated repository answers 401 to an anonymous request
            raise ModelError(gated_message(repo, endpoint)) from e
        raise ModelError(
            f"hub repository {repo} does not exist or is private (log in with `hf auth login` or HF_TOKEN "
            f"if it is yours); check the model name"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelError(f"hub repository {repo} has no revision {request.revision!r}") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        # huggingface_hub's way of saying "no connection and not cached"
        raise WeightsNotFoundError(
            _missing_message(request, [(filename,)], cache, f"Downloading it from {endpoint} failed: {e}.", HEAD_FAILED)
        ) from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(filename) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if request.gated and status in (401, 403):
            raise ModelError(gated_message(repo, endpoint)) from e
        raise ModelError(f"downloading {filename} from hub repository {repo} failed: {e}") from e
    except OSError as e:  # connection reset, disk full, ...
        raise WeightsNotFoundError(
            _missing_message(request, [(filename,)], cache, f"Downloading it from {endpoint} failed: {e}.", HEAD_FAILED)
        ) from e
