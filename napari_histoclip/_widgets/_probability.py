"""The class a result's probability layer shows, picked in the Zero-shot tab.

A result has one probability layer for all its classes (``_layers.probability_layer``): a
layer per class cost napari 0.2-0.6 s of UI thread each to build. This box picks which class
it shows; picking one also shows the layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox

from napari_histoclip._layer_meta import LayerKind, is_ours, layer_record
from napari_histoclip._layers import show_probability
from napari_histoclip._slide import slide_of


class ProbabilityPicker(ComboBox):
    """The classes of the chosen slide's probability layer (the result shown last first).

    Parameters
    ----------
    ctx
        The dock: its ``viewer`` and its ``slide`` box.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._last: Any = None  # the probability layer of the result shown last
        super().__init__(label="Probability of", choices=self._choices, nullable=False,
                         tooltip="the class whose probability map the result's probability layer shows")
        self.changed.connect(self._picked)
        # a click on the class already chosen (the first, when a result arrives) shows it too
        self.native.activated.connect(lambda _index: self._picked(self.value))
        ctx.slide.changed.connect(self.reset_choices)

    def follow(self, layer: Any) -> None:
        """A result was just shown: pick among the classes of its probability ``layer``."""
        self._last = layer
        self.reset_choices()

    def target(self) -> Any | None:
        """The probability layer the box acts on: the last shown when it is on the chosen slide
        and still in the viewer, else the chosen slide's (a whole-slide result first)."""
        layers = list(self.ctx.viewer.layers)
        chosen = self.ctx.slide.value
        info = slide_of(chosen) if chosen is not None else None
        if info is None:
            return None
        want = Path(info.path).resolve()

        def on_slide(layer: Any) -> bool:
            own = slide_of(layer)
            return own is not None and Path(own.path).resolve() == want and is_ours(layer, LayerKind.PROBABILITY)

        if self._last is not None and self._last in layers and on_slide(self._last):
            return self._last
        mine = sorted((lyr for lyr in layers if on_slide(lyr)), key=lambda lyr: layer_record(lyr).region)
        return mine[0] if mine else None

    def reset_choices(self, *_: Any) -> None:
        """Follow the target layer's classes and the class it shows (showing nothing new)."""
        with self.changed.blocked():
            super().reset_choices()
            layer = self.target()
            if layer is not None and layer.metadata.get("label") in self.choices:
                self.value = layer.metadata["label"]
        self.enabled = bool(self.choices)

    def _choices(self, _widget: Any = None) -> list[str]:
        layer = self.target()
        return list(layer_record(layer).labels) if layer is not None else []

    def _picked(self, label: str | None) -> None:
        layer = self.target()
        if layer is None or label is None:
            return
        show_probability(layer, label)
        layer.visible = True
