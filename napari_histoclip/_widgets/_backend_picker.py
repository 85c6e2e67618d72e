"""The dock's backend picker: work on this computer, or on a ``histoclip serve`` server.

A server is a URL and a token. Connecting runs in a worker (a down server must not freeze
napari): ``/v1/health`` (is it a histoclip server, and of this API version?) then
``/v1/capabilities`` (is the token good?), each failure said in one line in the picker and as a
notification. Once connected the dock's backend is an :class:`backend.remote.HttpBackend`, made
by a factory that ignores the device: a device change never swaps a remote backend for a local
one (the server picks its own device, shown in the picker; the device box is disabled).

What is remembered (beside the dock's ``dock.json``, in the same config folder): the choice
and the URL in ``backend.json``; the token in ``server-tokens.json``, one per URL, a file of mode
0600 written private from its creation, like ``~/.netrc`` or an SSH key. Why not the OS keyring
(``keyring``): it is not a dependency of napari, and on the Linux workstations and remote
desktops where napari often runs there is no Secret Service session for it to talk to; a
private file works everywhere and is what the server's own token store does. The token field
is a password field and is never filled back in: an empty field means "the remembered token".

Slides of the server are listed in the picker and open as layers streamed from the server
(``/v1/slides/ID/region``; why streaming rather than a local copy: ``backend.server.pixels``).
The layer's slide path is the server's slide id, so every task names the slide the server knows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton

from napari_histoclip._settings import config_root
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._main import local_backend
from napari_histoclip._widgets._wrap import set_short_text, wrap_label

if TYPE_CHECKING:
    from napari_histoclip._context import DockContext

log = logging.getLogger(__name__)

CHOICE_FILE = "backend.json"
TOKEN_FILE = "server-tokens.json"


class Where(StrEnum):
    LOCAL = "this computer"
    SERVER = "a server"


@dataclass(frozen=True)
class BackendChoice:
    """What the picker remembers: where to work and the server's URL (never the token)."""

    where: Where = Where.LOCAL
    url: str = ""


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} (and a log line) when missing or unreadable: remembered
    choices are a convenience, never a reason for the dock not to open."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); ignored", path, e)
        return {}
    return raw if isinstance(raw, dict) else {}


def _write_json(path: Path, data: dict[str, Any], *, mode: int | None = None) -> None:
    from backend.atomic import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n", mode=mode)
    except OSError as e:
        log.warning("%s: cannot remember the dock's server (%s)", path, e)


def load_choice() -> BackendChoice:
    raw = _read_json(config_root() / CHOICE_FILE)
    where = raw.get("where")
    url = raw.get("url")
    return BackendChoice(Where(where) if where in set(Where) else Where.LOCAL, url if isinstance(url, str) else "")


def save_choice(choice: BackendChoice) -> None:
    _write_json(config_root() / CHOICE_FILE, {"where": str(choice.where), "url": choice.url})


def load_token(url: str) -> str:
    """The remembered token of the server at ``url`` ("" for none)."""
    token = _read_json(config_root() / TOKEN_FILE).get(url)
    return token if isinstance(token, str) else ""


def save_token(url: str, token: str) -> None:
    """Remember ``token`` for ``url`` in a file only this user can read (mode 0600)."""
    path = config_root() / TOKEN_FILE
    tokens = {k: v for k, v in _read_json(path).items() if isinstance(v, str)}
    tokens[url] = token
    _write_json(path, tokens, mode=0o600)


def connect(url: str, token: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check the server at ``url`` with ``token``: its capabilities and slide list, or a
    :class:`~backend.remote.RemoteError` saying what is wrong (unreachable, not a histoclip
    server, another API version, a refused token). Runs in a worker."""
    from backend.remote import AuthError, HttpBackend

    # No retries: the user is waiting for an answer, and a retry will not make a wrong URL right.
    with HttpBackend(url, token or None, retries=0) as probe:
        try:
            caps = probe.capabilities()
        except AuthError as e:
            what = "refused the token" if token else "needs a token"
            raise AuthError(f"{probe.url} {what} (401): paste the token a server admin made with "
                            "'histoclip serve --add-token NAME'") from e
        return caps, probe.slides()


class BackendPicker(Container):
    """The picker above the dock's header; ``dock`` is the dock's context."""

    def __init__(self, dock: DockContext) -> None:
        self.dock = dock
        self.where = ComboBox(label="Work on", choices=[str(w) for w in Where], value=str(Where.LOCAL),
                              tooltip="run the models here, or on a GPU server ('histoclip serve')")
        self.url = LineEdit(label="Server", tooltip="the server's URL, e.g. https://gpu.example.org")
        self.url.native.setPlaceholderText("https://gpu-server:8765")
        self.token = LineEdit(label="Token", tooltip="the bearer token the server's admin gave you")
        from qtpy.QtWidgets import QLineEdit

        self.token.native.setEchoMode(QLineEdit.EchoMode.Password)  # never echoed, not copyable
        self.connect_button = PushButton(text="Connect")
        self.state = Label(value="working on this computer")
        wrap_label(self.state)  # a failed Connect's message must not widen the dock
        self.server_slide = ComboBox(label="Server slide", choices=[], nullable=True,
                                     tooltip="a slide on the server, shown streamed from it")
        self.open_button = PushButton(text="Open server slide")
        super().__init__(widgets=[self.where, self.url, self.token, self.connect_button, self.state,
                                  self.server_slide, self.open_button], labels=True)
        self.connected: str | None = None  # the URL of the server in use
        self.capabilities: dict[str, Any] = {}
        self._slides: list[dict[str, Any]] = []
        self.where.changed.connect(self._where_changed)
        self.connect_button.changed.connect(self.connect)
        self.open_button.changed.connect(self.open_slide)
        saved = load_choice()
        self.url.value = saved.url
        self.where.value = str(saved.where)
        self._show_fields()
        if saved.where is Where.SERVER and saved.url:
            from qtpy.QtCore import QTimer

            # Once the dock is built, in a worker: the dock opens at once, connected when the server answers.
            QTimer.singleShot(0, self.connect)

    # --- state shown ----------------------------------------------------------------------

    def _show_fields(self) -> None:
        server = self.where.value == str(Where.SERVER)
        for w in (self.url, self.token, self.connect_button):
            w.visible = server
        for widget in (self.server_slide, self.open_button):
            widget.visible = server and self.connected is not None
        if server and not self.token.value:
            remembered = load_token(str(self.url.value).strip())
            self.token.native.setPlaceholderText("remembered token (type to replace)" if remembered else "token")

    def _where_changed(self, value: str) -> None:
        if value == str(Where.LOCAL) and self.connected is not None:
            self._use_local()
        elif value == str(Where.LOCAL):
            set_short_text(self.state, "working on this computer")  # a failed Connect's message goes
        elif value == str(Where.SERVER) and self.connected is None:
            self.state.value = "not connected: press Connect (working on this computer until then)"
        save_choice(BackendChoice(Where(value), str(self.url.value).strip()))
        self._show_fields()

    # --- handlers -------------------------------------------------------------------------

    def connect(self) -> bool:
        """Check the server in a worker, then make it the dock's backend (errors shown here)."""
        from napari_histoclip._tasks import error_line, show_task_error

        url = str(self.url.value).strip().rstrip("/")
        typed = str(self.token.value).strip()
        token = typed or load_token(url)
        if not url:
            self.state.value = "Server: type the server's URL first"
            return False
        self.state.value = f"connecting to {url}…"

        def done(result: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
            caps, slides = result
            if typed:
                save_token(url, typed)
            self.token.value = ""
            save_choice(BackendChoice(Where.SERVER, url))
            self._use_server(url, token, caps, slides)

        def failed(error: Exception) -> None:
            inner = getattr(error, "error", error)
            set_short_text(self.state, f"not connected: {error_line(inner)}")  # the toast has it whole
            show_task_error(error)

        return self.dock.runner.run(f"Connecting to {url}", lambda progress, cancel: connect(url, token), done,
                                    on_error=failed)

    @handler
    def open_slide(self) -> None:
        """Show the chosen server slide as a layer streamed from the server (its description is
        one request, made in a worker)."""
        entry = next((s for s in self._slides if s["id"] == self.server_slide.value), None)
        if self.connected is None or entry is None:
            raise UserError("Server slide: connect to a server and choose one of its slides first")
        backend = self.dock.backend

        def done(layer_data: tuple[Any, ...]) -> None:
            levels, kwargs, _ = layer_data
            self.dock.viewer.add_image(levels, **kwargs)

        self.dock.run(f"Opening {entry['name']}", lambda progress, cancel: remote_layer(backend, entry["id"]), done)

    # --- switching backends ---------------------------------------------------------------

    def _use_server(self, url: str, token: str, caps: dict[str, Any], slides: list[dict[str, Any]]) -> None:
        from backend.remote import HttpBackend

        # The factory ignores the device: a device change remakes the same remote backend.
        self.dock.use_backend_factory(lambda _device: HttpBackend(url, token or None),
                                      f"the server's device: {caps.get('device', '?')}")
        self.connected, self.capabilities, self._slides = url, caps, slides
        self.server_slide.choices = [(s["name"], s["id"]) for s in slides]
        self.state.value = (f"connected to {url} (API {caps.get('api_version')}, device {caps.get('device')}, "
                            f"{len(slides)} slides)")
        self._show_fields()
        self.dock.refresh_models()

    def _use_local(self) -> None:
        self.dock.use_backend_factory(local_backend)
        self.connected, self.capabilities, self._slides = None, {}, []
        self.server_slide.choices = []
        self.state.value = "working on this computer"
        self.dock.refresh_models()


def remote_layer(backend: Any, slide_id: str) -> tuple[Any, ...]:
    """The layer data tuple of the server's slide ``slide_id``, streamed (as the reader's tuple
    for a local file: same metadata, so every panel treats it as a slide)."""
    from backend.remote.pixels import RemoteSlideInfo, remote_multiscale
    from napari_histoclip._reader import GuardedLevel, with_overviews
    from napari_histoclip._slide import SlideInfo

    info = RemoteSlideInfo.from_json(backend.slide_info(slide_id))
    native = remote_multiscale(backend, info)
    levels = [GuardedLevel(lvl, info.name) for lvl in with_overviews(native)]
    w, h = info.level_dimensions[0]
    slide = SlideInfo(path=info.id, name=Path(info.name).name, width=w, height=h, mpp=info.mpp)
    kwargs = slide.layer_kwargs(name=slide.name, rgb=True, multiscale=True, contrast_limits=(0, 255))
    downsamples = list(info.level_downsamples)
    downsamples += [float(2 ** (i + 1) * downsamples[-1]) for i in range(len(levels) - len(native))]
    kwargs["metadata"] = {**kwargs["metadata"], "level_downsamples": downsamples, "server": backend.url}
    return (levels, kwargs, "image")


__all__ = ["BackendChoice", "BackendPicker", "Where", "connect", "remote_layer"]
