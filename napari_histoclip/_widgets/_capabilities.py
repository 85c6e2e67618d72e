"""The dock greys out what the chosen model cannot do, with a tooltip saying why.

Every encoder embeds images; vision-language models also embed text. The controls of the text
tasks (zero-shot from prompts, the text heatmap, text search) are disabled while the chosen
model is image-only, their tooltip naming the model and what the task needs
(:func:`backend.needs.why_not`). What a model embeds comes from the backend's model list
(``ModelInfo.capabilities``) or, for a model typed in "or model" (a bundle folder), from its
manifest (:func:`backend.needs.model_capabilities`, no weights read). A model whose
capabilities are unknown here (a server's bundle name) leaves every control enabled: the backend
refuses a text task for it with a clear error.

Refine follows the model too: on an image-only model it starts from marks alone
(:func:`marks_only`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.needs import Task, why_not

if TYPE_CHECKING:
    from magicgui.widgets import Widget

    from napari_histoclip._widgets._main import HistoclipWidget



class ModelGate:
    """Enables the dock's text controls for vision-language models only (state in one place:
    the dock's model choice; the panels' controls are wired here, not read by each other)."""

    def __init__(self, dock: HistoclipWidget) -> None:
        self.dock = dock
        self.known: dict[str, tuple[str, ...]] = {}
        self._tips: dict[int, str | None] = {}  # each control's own tooltip, restored when enabled
        for widget in (dock.model, dock.model_other, dock.zero_shot.source):
            widget.changed.connect(self.update)

    def learn(self, infos: Any) -> None:
        """The backend's model list (``ModelInfo``): what each registered model embeds."""
        self.known = {m.name: tuple(m.capabilities) for m in infos}
        self.update()

    def capabilities(self) -> tuple[str, ...] | None:
        """What the chosen model embeds, or None when unknown here."""
        from napari_histoclip._widgets._handler import UserError

        try:
            name = self.dock.model_name
        except UserError:
            return None
        if name in self.known:
            return self.known[name]
        from backend.needs import model_capabilities

        return model_capabilities(name) or None

    def why_not(self, task: Task) -> str | None:
        """Why the chosen model cannot do ``task`` (a tooltip), or None when it can or is unknown."""
        caps = self.capabilities()
        if caps is None:
            return None
        name = self.dock.model_name
        return why_not(task, Path(name).name if os.sep in name else name, caps)  # a bundle by its folder's name

    def can(self, task: Task) -> bool:
        return self.why_not(task) is None

    def controls(self) -> dict[Task, list[Widget]]:
        """The controls of each text task (zero-shot's only while its labels come from prompts:
        applying a classifier needs images only)."""
        from napari_histoclip._widgets._zeroshot import TEXT_PROMPTS

        zs, search = self.dock.zero_shot, self.dock.search
        out: dict[Task, list[Widget]] = {
            Task.HEATMAP: [zs.query, zs.heatmap_button], Task.TEXT_SEARCH: [search.text, search.text_button],
        }
        # labels from prompts: the tiles' map, the whole-slide answer and the cohort triage
        prompt_buttons: list[Widget] = [zs.run_button, zs.slide_button, zs.triage.run_button]
        out[Task.ZERO_SHOT] = prompt_buttons
        if zs.source.value != TEXT_PROMPTS:
            out[Task.ZERO_SHOT] = []
            for widget in prompt_buttons:
                self._set(widget, None)
        return out

    def update(self, *_: Any) -> None:
        """Enable or disable each text control for the model chosen now."""
        for task, widgets in self.controls().items():
            why = self.why_not(task)
            for widget in widgets:
                self._set(widget, why)

    def _set(self, widget: Widget, why: str | None) -> None:
        key = id(widget)
        if key not in self._tips:
            self._tips[key] = widget.tooltip
        widget.enabled = why is None
        widget.tooltip = self._tips[key] if why is None else why


def marks_only(layer: Any) -> bool:
    """Whether a class-map layer was started from marks alone (Refine then sends no prompts)."""
    from napari_histoclip._layer_meta import layer_record

    return layer is not None and layer_record(layer).marks_only
