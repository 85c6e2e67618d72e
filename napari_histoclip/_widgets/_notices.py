"""What the dock tells a user without being asked: a model whose weights are not on disk yet,
and the last failed task's error (its headline shown, its whole text on demand).

napari's toast shows one elided line and vanishes; a 700-character error about missing
weights needs a place where its headline stays and the rest can be read.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

#: Error headline style: a notice, readable on napari's dark and light themes.
HEADLINE_STYLE = "color: #e8785c; font-weight: bold;"


def weights_note(info: Any) -> str:
    """What to say about a listed model before it is used ("" when nothing).

    Parameters
    ----------
    info
        A ``backend.api.ModelInfo`` (``weights_on_disk`` False: not downloaded yet; None:
        the backend did not say).
    """
    if info is None or getattr(info, "weights_on_disk", None) is not False:
        return ""
    return (f"{info.name}: weights not on disk yet; its first use downloads them (network needed). "
            "Offline: pick another model, or a bundle folder in 'or model'.")


class ErrorPanel(QWidget):
    """The last task error: its headline in bold, "Details" shows the whole text, "×" hides it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.headline = QLabel("")
        self.headline.setWordWrap(True)
        self.headline.setStyleSheet(HEADLINE_STYLE)
        self.details_button = QPushButton("Details")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self._toggle_details)
        self.close_button = QPushButton("×")
        self.close_button.setToolTip("dismiss")
        self.close_button.setFixedWidth(28)
        self.close_button.clicked.connect(self.clear)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)  # selectable: a user can copy it into a bug report
        self.details.setMaximumHeight(96)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.headline, 1)
        row.addWidget(self.details_button)
        row.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.details)
        self.clear()

    def show_error(self, headline: str, full_text: str) -> None:
        """Show ``headline``; ``full_text`` behind the Details button (which shows only when
        it says more than the headline)."""
        self.headline.setText(headline)
        self.details.setPlainText(full_text)
        self.details_button.setChecked(False)
        self.details_button.setVisible(bool(full_text.strip()))
        self.setVisible(True)

    def clear(self) -> None:
        """Hide the panel (a new task starts, or the user dismissed it)."""
        self.details_button.setChecked(False)
        self.details.setVisible(False)
        self.setVisible(False)

    def _toggle_details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.details_button.setText("Hide details" if shown else "Details")
