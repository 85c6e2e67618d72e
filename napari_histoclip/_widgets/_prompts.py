"""The class-prompt table: one row per class, with its colour, name and extra phrasings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_histoclip._layers import default_color

DEFAULT_PROMPTS: tuple[str, ...] = ("tumor epithelium", "stroma", "lymphocytes", "adipose tissue")


def _header(header: QHeaderView | None) -> QHeaderView:
    """A table's header (Qt's types allow none; a ``QTableWidget`` always has both)."""
    if header is None:
        raise RuntimeError("the prompt table has lost a header")
    return header


@dataclass(frozen=True)
class PromptRow:
    """A class: its name (the prompt), colour ``#rrggbb`` and optional synonyms."""

    label: str
    color: str
    synonyms: tuple[str, ...] = ()


class _RowsTable(QTableWidget):
    """A table whose minimum height shows all its rows (between ``LEAST`` and ``MOST`` px),
    measured as shown (napari's style makes rows taller than Qt's default): in the dock's
    scroll area a page gets its minimum height, and a fixed 120 px hid the fourth prompt."""

    LEAST, MOST = 120, 170

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        top, side = _header(self.horizontalHeader()), _header(self.verticalHeader())
        need = top.sizeHint().height() + side.length() + 2 * self.frameWidth()
        return QSize(hint.width(), max(self.LEAST, min(self.MOST, need)))


class PromptTable(QWidget):
    """An editable list of classes; click a colour cell to pick another colour."""

    COLOR, LABEL, SYNONYMS = range(3)

    def __init__(self, rows: Sequence[PromptRow] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = _RowsTable(0, 3, self)
        self.table.setHorizontalHeaderLabels(["", "class prompt", "synonyms (; separated)"])
        header = _header(self.table.horizontalHeader())
        header.setSectionResizeMode(self.COLOR, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(self.LABEL, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(self.SYNONYMS, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(self.COLOR, 28)
        _header(self.table.verticalHeader()).setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setMaximumHeight(_RowsTable.MOST)
        self.table.cellClicked.connect(self._maybe_pick_color)

        add = QPushButton("+ class", self)
        add.clicked.connect(lambda: self.add_row())
        remove = QPushButton("− selected", self)
        remove.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self.set_rows(rows if rows is not None else [PromptRow(p, default_color(i)) for i, p in enumerate(DEFAULT_PROMPTS)])

    # --- values ---------------------------------------------------------------------------

    def rows(self) -> list[PromptRow]:
        """The classes with a non-empty prompt, in table order."""
        out = []
        for r in range(self.table.rowCount()):
            label = (self.table.item(r, self.LABEL) or QTableWidgetItem("")).text().strip()
            if not label:
                continue
            swatch = self.table.item(r, self.COLOR)
            color = swatch.data(Qt.ItemDataRole.UserRole) if swatch is not None else default_color(r)
            raw = (self.table.item(r, self.SYNONYMS) or QTableWidgetItem("")).text()
            synonyms = tuple(s.strip() for s in raw.split(";") if s.strip())
            out.append(PromptRow(label, str(color), synonyms))
        return out

    def set_rows(self, rows: Sequence[PromptRow]) -> None:
        self.table.setRowCount(0)
        for row in rows:
            self.add_row(row.label, row.color, row.synonyms)

    def add_row(self, label: str = "", color: str | None = None, synonyms: Sequence[str] = ()) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        swatch = QTableWidgetItem("")
        swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
        self.table.setItem(r, self.COLOR, swatch)
        self._set_color(r, color or default_color(r))
        self.table.setItem(r, self.LABEL, QTableWidgetItem(label))
        self.table.setItem(r, self.SYNONYMS, QTableWidgetItem("; ".join(synonyms)))
        self.table.updateGeometry()

    def remove_selected(self) -> None:
        for r in sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True):
            self.table.removeRow(r)
        self.table.updateGeometry()

    def set_color(self, row: int, color: str) -> None:
        self._set_color(row, color)

    # --- internals ------------------------------------------------------------------------

    def _set_color(self, row: int, color: str) -> None:
        item = self.table.item(row, self.COLOR)
        if item is None:
            raise IndexError(f"prompt table: no row {row + 1} (it has {self.table.rowCount()})")
        item.setBackground(QColor(color))
        item.setData(Qt.ItemDataRole.UserRole, QColor(color).name())
        item.setToolTip(f"{color}: click to change")

    def _maybe_pick_color(self, row: int, column: int) -> None:
        if column != self.COLOR:
            return
        swatch = self.table.item(row, self.COLOR)
        if swatch is None:
            return
        current = QColor(swatch.data(Qt.ItemDataRole.UserRole))
        chosen = QColorDialog.getColor(current, self, "Class colour")
        if chosen.isValid():
            self._set_color(row, chosen.name())
