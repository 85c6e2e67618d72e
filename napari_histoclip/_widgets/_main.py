"""The HistoCLIP dock: a shared header (model, device, slide), one tab per task, one footer.

Why one tabbed dock rather than a dock per task: the tasks share one ``Backend`` (a loaded model
and its in-memory caches are worth keeping), one model/device/slide choice, and one progress bar
with a cancel button; a pathologist moves between them on the same slide, and four docks would
crowd the canvas. Each tab is a magicgui ``Container`` whose handlers tests call directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, LineEdit, ProgressBar, PushButton, Widget
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_histoclip._context import BackendFactory, BackendSlot, PromptSet
from napari_histoclip._layer_meta import update_record
from napari_histoclip._mpp import (
    missing_mpp_message,
    mpp_field,
    set_slide_mpp,
    typed_mpp,
    unusual_mpp_message,
    watch_units,
)
from napari_histoclip._mpp_memory import MppMemory
from napari_histoclip._settings import DockSettings, load_settings, save_settings
from napari_histoclip._slide import SlideInfo, slide_layers, slide_of
from napari_histoclip._tasks import TaskRunner, TaskState, error_line, show_task_error
from napari_histoclip._widgets._handler import UserError, handler
from napari_histoclip._widgets._paths import chosen_path

if TYPE_CHECKING:
    import napari

    from backend.api import Backend, SlideRef
    from backend.needs import Task
    from napari_histoclip._marks import Cell
    from napari_histoclip._widgets._zeroshot import ZeroShotPanel

log = logging.getLogger(__name__)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def local_backend(device: str | None) -> Backend:
    """The in-process backend (imports torch on first use, not before)."""
    from backend.local import LocalBackend

    return LocalBackend(device=None if device in (None, "auto") else device)


class HistoclipWidget(QWidget):
    """The plugin's dock widget.

    Parameters
    ----------
    viewer
        The napari viewer.
    backend
        A ``backend.api.Backend`` to use (tests pass a double); by default one is made on first
        use by ``backend_factory``.
    backend_factory
        Makes a backend for a device name; default: :func:`local_backend`.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        backend: Backend | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        super().__init__()
        self.viewer = viewer
        #: The backend and who owns it: one the factory made is closed with the dock.
        self.backend_slot = BackendSlot(backend_factory or local_backend, backend, self._backend_close_failed)
        self._random_warned: set[str] = set()

        self.model = ComboBox(label="Model", choices=[], nullable=False, tooltip="CLIP model from the registry")
        self.model_other = LineEdit(
            label="or model",
            tooltip="any hf-hub:ORG/REPO open_clip id or a model bundle folder; when filled, used instead of the list",
        )
        self.model_other.native.setPlaceholderText("hf-hub:ORG/REPO or a model bundle folder")
        # said before anything is pressed: the chosen model's weights are not on disk (offline, a run fails)
        self.model_note = Label(value="", label="")
        self.model_note.native.setWordWrap(True)
        self._model_infos: dict[str, Any] = {}
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.slide = ComboBox(label="Slide", choices=self._slide_choices, tooltip="the slide layer to work on")
        self.mpp = LineEdit(label="µm/px", tooltip="µm per level-0 pixel of a slide whose metadata has none "
                            "(remembered for that slide); from the metadata otherwise")
        self.mpp.native.editingFinished.connect(self._mpp_typed)
        self.slide.changed.connect(self.show_mpp)
        self._mpp_memory = MppMemory(self)
        self.embed_button = PushButton(text="Embed slide", tooltip="embed every tissue tile (cached on disk)")
        self.header: Container[Widget] = Container(widgets=[
            self.model, self.model_note, self.model_other, self.device, self.slide, self.mpp, self.embed_button])
        from napari_histoclip._widgets._backend_picker import BackendPicker  # this computer or a server

        self.backend_picker = BackendPicker(self)
        self.header.insert(0, self.backend_picker)
        self.device.changed.connect(self._device_changed)
        self.embed_button.changed.connect(self.embed)

        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status = Label(value="ready")
        from napari_histoclip._widgets._wrap import wrap_label

        wrap_label(self.status)  # a long task line or error wraps; the dock keeps its width
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.footer: Container[Widget] = Container(widgets=[self.status, self.progress, self.cancel_button], layout="vertical")
        self.runner = TaskRunner(self._show_state)
        from napari_histoclip._widgets._notices import ErrorPanel

        self.error_panel = ErrorPanel()  # the last task error: headline, whole text on demand
        self.progress.native.setTextVisible(False)

        from napari_histoclip._widgets._caption import CaptionPanel
        from napari_histoclip._widgets._export import ExportPanel
        from napari_histoclip._widgets._search import SearchPanel
        from napari_histoclip._widgets._zeroshot import ZeroShotPanel

        self.gate: ModelGate | None = None  # made once the tabs whose controls it wires exist
        self.zero_shot: ZeroShotPanel = ZeroShotPanel(self)
        self.captions = CaptionPanel(self)
        self.search = SearchPanel(self)
        self.export = ExportPanel(self)
        from napari_histoclip._widgets._scroll_tabs import ScrollTabs  # pages scroll: a short dock

        self.tabs = ScrollTabs(self)
        for panel, title in (
            (self.zero_shot, "Zero-shot"),
            (self.captions, "Caption"),
            (self.search, "Find similar"),
            (self.export, "Export"),
        ):
            self.tabs.addTab(panel.native, title)
        from napari_histoclip._widgets._refine import add_refine_tab  # few-shot refine
        self.refine = add_refine_tab(self)
        from napari_histoclip._widgets._capabilities import ModelGate  # text controls follow the model
        self.gate = ModelGate(self)
        from napari_histoclip._widgets._speed import SlowRunWatch  # a big encoder on CPU: say so
        self.slow_watch = SlowRunWatch()

        # Header, tabs and error in one scroll area, each tab's page in its own: the dock asks
        # for little height, and a header that grows (a failed Connect) never grows the window.
        from napari_histoclip._widgets._scroll_tabs import BodyLayout, PageScroll

        body = QWidget()
        body_layout = BodyLayout(body)
        body_layout.setContentsMargins(0, 0, 0, 0)
        body_layout.addWidget(self.header.native)
        body_layout.addWidget(self.tabs, 1)
        body_layout.addWidget(self.error_panel)
        layout = QVBoxLayout(self)
        layout.addWidget(PageScroll(body), 1)
        layout.addWidget(self.footer.native)

        events = viewer.layers.events
        self._viewer_events: tuple[Any, ...] = (events.inserted, events.removed, events.reordered)
        for ev in self._viewer_events:
            ev.connect(self._layers_changed)
        watch_units(viewer)  # slides with and without mpp in one unit (napari_histoclip._mpp)
        # A closed dock must stop listening, or the viewer's events reach deleted Qt widgets.
        # napari's close button only unparents the dock's widget (see event()); quitting
        # destroys it.
        self._closed = False
        self._docked = False
        self.destroyed.connect(lambda *_: self.disconnect_viewer())
        self.refresh_models()
        self._restore_settings()
        for layer in slide_layers(viewer.layers):
            self._mpp_memory.recall(layer)
        self._pick_visible_slide()
        self.show_mpp()
        for widget in (self.model, self.model_other, self.search.index_folder):
            widget.changed.connect(self._remember)
        self.model.changed.connect(self._show_weights_note)
        self.model_other.changed.connect(self._show_weights_note)
        self._show_weights_note()
        from napari_histoclip._warmup import start_warmup

        start_warmup()  # the first slide's and first result's imports, off the UI thread
        for widget in (self.model, self.model_other):  # the corpus source needs a vision-language model
            widget.changed.connect(lambda *_: self.captions.source.reset_choices())

    def event(self, event: QEvent | None) -> bool:
        """Close when napari takes the dock down: its close button unparents this widget."""
        if event is not None and event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.disconnect_viewer()
        return super().event(event)

    def disconnect_viewer(self) -> None:
        """The dock is closing: stop following the viewer's layers, cancel the running task
        (whose result is then dropped), remember the choices and release the backend it made
        (models, open indexes) once the task has stopped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for ev in self._viewer_events:
            ev.disconnect(self._layers_changed)
        self._viewer_events = ()
        self.captions.stop_watching()
        self.refine.disconnect_viewer()
        self._remember()
        slot = self.backend_slot
        self.runner.close(then=slot.release if slot.owned else None)

    # --- shared state the panels use ------------------------------------------------------

    @property
    def backend(self) -> Backend:
        try:
            return self.backend_slot.get(self.device.value)
        except ImportError as e:
            raise UserError(f"backend: the in-process backend is not available ({e})") from e

    @property
    def closed(self) -> bool:
        """Whether the dock has closed (it follows the viewer no more)."""
        return self._closed

    def use_backend(self, backend: Backend) -> None:
        """Use ``backend`` from now on (the caller's: the dock never closes it); one the dock
        made is closed."""
        self.backend_slot.inject(backend)

    def use_backend_factory(self, factory: BackendFactory, device_note: str | None = None) -> None:
        """Make backends with ``factory`` from now on (the one in use is closed if the dock made
        it). ``device_note``: the factory's backends choose their own device (a server's), said in
        the device box, which is then locked; None: the device box chooses again."""
        self.backend_slot.use_factory(factory)
        self.device.enabled = device_note is None
        self.device.tooltip = device_note

    @property
    def model_name(self) -> str:
        other = str(self.model_other.value).strip()
        if other:
            return other
        if not self.model.value:
            raise UserError("Model: no model chosen (the registry listed none)")
        return str(self.model.value)

    def model_can(self, task: Task) -> bool:
        """Whether the chosen model can do ``task`` (unknown or no model yet: taken to be able)."""
        return self.gate is None or self.gate.can(task)

    def slide_layer(self) -> Any | None:
        return self.slide.value

    def select_slide(self, layer: Any) -> None:
        """Make ``layer`` (a slide's image layer) the chosen slide."""
        self.slide.value = layer

    def require_slide(self) -> tuple[Any, SlideInfo]:
        """The chosen slide layer and its slide, or a UserError saying to open one."""
        layer = self.slide.value
        info = slide_of(layer) if layer is not None else None
        if layer is None or info is None:
            raise UserError("Slide: open a whole-slide image first (File > Open, or drag it in)")
        return layer, info

    def slide_ref(self, info: SlideInfo) -> SlideRef:
        """The slide for a request, with the µm/px the user gave when its metadata has none
        (the backend uses it only then); a UserError saying where to give it when missing."""
        from backend.api import SlideRef

        if info.mpp is None:
            raise UserError(missing_mpp_message(info.name))
        return SlideRef(info.path, info.mpp)

    def run(self, label: str, fn: Callable[..., Any], on_done: Callable[[Any], None]) -> bool:
        """Run ``fn(progress, cancel)`` in a worker; ``on_done(result)`` on the UI thread; a
        failure is a toast with its headline and the whole text in the dock's error panel. A slow
        embedding (a large model on CPU) is announced as it starts (:mod:`._speed`)."""
        try:
            work = self.slow_watch.wrap(fn, self.backend_slot.current, self.model_name)
        except UserError:  # no model chosen: nothing to estimate
            work = fn
        started = self.runner.run(label, work, on_done, lambda e: show_task_error(e, self.error_panel.show_error))
        if started:
            self.error_panel.clear()
        return started

    def warn_random(self, result: Any, model: str) -> None:
        """Say once per model that its weights are random (test models): results mean nothing."""
        from napari.utils.notifications import show_warning

        if getattr(result, "random_weights", False) and model not in self._random_warned:
            self._random_warned.add(model)
            show_warning(f"model {model}: random weights (a test model); its labels and scores mean nothing")

    def show_class_map(self, result: Any, info: SlideInfo, colors: list[str], region: bool = False) -> list[Any]:
        """Show a class-map result as the Zero-shot tab does; returns its layers."""
        return self.zero_shot.show_result(result, info, colors, region)

    def show_class_map_steps(self, result: Any, info: SlideInfo, colors: list[str], region: bool = False,
                             made: Sequence[Any] | None = None) -> Generator[None, None, list[Any]]:
        """:meth:`show_class_map` in turns of the event loop; returns the layers."""
        return self.zero_shot.show_result_steps(result, info, colors, region, made=made)

    def prompt_set(self) -> PromptSet:
        """The Zero-shot tab's prompts as typed."""
        return self.zero_shot.prompt_set()

    def painted_marks(self, slide_path: str) -> dict[Cell, str]:
        """The Refine tab's painted marks on a slide."""
        state = self.refine.slides.get(slide_path)
        return dict(state.marks) if state is not None else {}

    def import_marks(self, info: SlideInfo, annotations: Any) -> int:
        """Give the Refine tab marks read from GeoJSON; the number of tiles marked."""
        return self.refine.import_marks(info, annotations)

    # --- handlers -------------------------------------------------------------------------

    @handler
    def refresh_models(self) -> None:
        """List the registry's models in the model picker."""
        try:
            infos = self.backend.list_models()
        except UserError:
            self.model.choices = []
            raise
        self._model_infos = {m.name: m for m in infos}
        choices = [(f"{m.name} (random weights)" if m.random_weights else
                    f"{m.name} (not downloaded)" if m.weights_on_disk is False else m.name, m.name)
                   for m in infos]
        self.model.choices = choices
        if choices and self.model.value is None:
            self.model.value = choices[0][1]
        self._show_weights_note()
        if self.gate is not None:  # made with the tabs, before the first listing
            self.gate.learn(infos)

    @handler
    def embed(self) -> None:
        """Embed the chosen slide's tissue tiles (no-op when cached), with progress."""
        _, info = self.require_slide()
        ref, model, backend = self.slide_ref(info), self.model_name, self.backend

        def done(res: Any) -> None:
            from napari.utils.notifications import show_info

            self.warn_random(res, model)
            how = "from the cache" if res.from_cache else f"in {self.runner.last_duration:.1f} s"
            show_info(f"{info.name}: {res.n_tiles} tiles embedded with {model} {how}")

        self.run(f"Embedding {info.name}", lambda progress, cancel: backend.embed_slide(
            ref, model, progress=progress, cancel=cancel), done)

    def can_open_slides(self) -> bool:
        """Whether :meth:`open_slides` would start now (open, not closing, no task running)."""
        return not self._closed and not self.runner.busy

    def open_slides(self, paths: list[Path], mpp: float | None = None) -> bool:
        """Read slides in the task runner, then add their layers on the UI thread (the reader's
        File > Open path while the dock is idle: ``_reader._idle_dock``); False if not started."""
        from napari_histoclip._open import open_in_runner

        return open_in_runner(self.runner, self.viewer, list(paths), mpp=mpp)

    def cancel(self) -> None:
        """Ask the running task to stop (the footer says so until it has)."""
        self.runner.cancel()

    @handler
    def set_mpp(self, text: str) -> None:
        """Give the chosen slide (which has no mpp of its own) the µm/px ``text`` (empty: none);
        remembered for the slide; its layers are rescaled to µm."""
        try:
            info, value = typed_mpp(self.slide.value, text)
        except ValueError as e:
            raise UserError(str(e)) from e
        if unusual := unusual_mpp_message(value, info.name):
            from napari.utils.notifications import show_warning

            show_warning(unusual)
        if value != info.mpp:
            set_slide_mpp(self.viewer.layers, info.path, value)
            self._mpp_memory.remember(info.path, value)
            self.viewer.reset_view()  # the slide changed size in the world: show it whole again
        self.show_mpp()

    # --- internals ------------------------------------------------------------------------

    def _slide_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(lyr.name, lyr) for lyr in slide_layers(self.viewer.layers)]

    def _layers_changed(self, event: Any = None) -> None:
        added = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and added in slide_layers([added]):
            self._mpp_memory.recall(added)
        before = self.slide.value
        self.slide.reset_choices()
        added = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and added in slide_layers([added]):
            self.slide.value = added  # a slide just opened is the one to work on
            self._show_opened(added)
        elif before is not None and before in [c[1] for c in self._slide_choices()]:
            self.slide.value = before
        if event is not None and getattr(event, "type", "") == "inserted":
            self._adopt_shapes(added)
        for panel in (self.zero_shot, self.captions, self.search, self.export):
            panel.reset_choices()

    def _adopt_shapes(self, layer: Any) -> None:
        """A Shapes layer of no slide (napari's own "new shapes layer" button) belongs to the
        slide chosen when it is made: its shapes are drawn on that slide's pixels, so another
        slide's runs must refuse them, and it hides with its slide."""
        from napari.layers import Shapes

        chosen = self.slide.value
        info = slide_of(chosen) if chosen is not None else None
        if info is not None and isinstance(layer, Shapes) and slide_of(layer) is None:
            update_record(layer, slide=info)

    def _show_opened(self, layer: Any) -> None:
        """A slide just opened is shown alone and whole: the other slides' layers (image, maps,
        shapes) share its world coordinates and would be drawn over it."""
        from napari_histoclip._viewer import frame_box, show_only_slide

        info = slide_of(layer)
        if info is None or len(slide_layers(self.viewer.layers)) < 2:
            return  # the first slide: napari frames it itself
        show_only_slide(self.viewer, info)
        frame_box(self.viewer, (0.0, 0.0, float(info.width), float(info.height)), info)

    def _pick_visible_slide(self) -> None:
        """A dock opened over slides already open works on the one shown: the top visible
        slide layer (the combo box's default, the first layer, may be a hidden one)."""
        visible = [lyr for lyr in slide_layers(self.viewer.layers) if lyr.visible]
        if visible:
            self.slide.value = visible[-1]

    def show_mpp(self, *_: Any) -> None:
        """The µm/px field follows the chosen slide (:func:`napari_histoclip._mpp.mpp_field`)."""
        field = mpp_field(self.slide.value)
        self.mpp.value = field.value
        self.mpp.native.setPlaceholderText(field.hint)
        self.mpp.native.setReadOnly(not field.editable)

    def _show_weights_note(self, *_: Any) -> None:
        """Under the model box: the chosen model's weights are not on disk (a first run offline
        would fail), or nothing."""
        from napari_histoclip._widgets._notices import weights_note

        if not hasattr(self, "model_note"):
            return  # refresh_models during construction, before the header exists
        other = str(self.model_other.value).strip()
        text = "" if other else weights_note(self._model_infos.get(str(self.model.value)))
        self.model_note.value = text
        self.model_note.visible = bool(text)

    def _mpp_typed(self) -> None:
        if not self.mpp.native.isReadOnly():
            self.set_mpp(self.mpp.value)

    def _device_changed(self, value: str) -> None:
        # A new device means a new backend (models are loaded on a device); made on next use.
        # An injected backend (a remote one especially) picks its own device: it is kept.
        self.backend_slot.device_changed()

    def _settings_now(self) -> DockSettings:
        return load_settings().updated(
            model=self.model.value, model_other=str(self.model_other.value).strip(),
            index=str(chosen_path(self.search.index_folder) or ""),
        )

    def _remember(self, *_: Any) -> None:
        save_settings(self._settings_now())

    def _restore_settings(self) -> None:
        saved = load_settings()
        if saved.model and saved.model in [v for v in self.model.choices]:
            self.model.value = saved.model
        self.model_other.value = saved.model_other
        if saved.index and Path(saved.index).exists():
            self.search.index_folder.value = Path(saved.index)

    def _backend_close_failed(self, e: Exception) -> None:
        """Closing the backend this dock made failed. It runs from Qt slots (a closed dock, a
        device change): an exception escaping one makes PyQt abort napari, so the failure is
        logged with its traceback and shown, not raised."""
        from napari.utils.notifications import show_error

        log.error("closing the backend failed", exc_info=e)
        show_error(f"HistoCLIP: closing the backend failed: {error_line(e)}")

    def _show_state(self, state: TaskState | None) -> None:
        busy = state is not None
        self.cancel_button.enabled = busy
        self.embed_button.enabled = not busy
        self.progress.native.setTextVisible(busy)
        if state is None:
            # a cancelled task let go (a model load cannot be interrupted) still ends unseen
            self.status.value = "ready" if not self.runner.background else (
                "ready (cancelled work is ending in the background; its result will be dropped)")
            self.progress.max, self.progress.value = 1, 0
            return
        self.status.value = state.text
        self.cancel_button.enabled = not state.cancelling
        if state.total <= 0:
            # Unknown length (loading a model, opening an index): Qt's busy bar says "working".
            self.progress.value, self.progress.max = 0, 0
        else:
            self.progress.max = state.total
            self.progress.value = min(state.done, state.total)


