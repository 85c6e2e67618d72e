"""Tabs whose pages scroll: the dock asks for little height of its own.

A tab page placed directly in a ``QTabWidget`` makes the dock's minimum height that of its
tallest page (~1009 px here): the window cannot be shorter, and a page that grows (a long status
after a failed Connect) makes the window taller. In a ``QScrollArea`` (``widgetResizable``) a
page takes the height there is and scrolls beyond it; its width still sets the dock's, so
nothing is cut at the side.
"""

from __future__ import annotations

from typing import Any, overload

from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon
from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

#: The least height a tab asks for (its page scrolls below that).
MIN_PAGE_HEIGHT = 160


class PageScroll(QScrollArea):
    """A scroll area around one tab page: as wide as the page needs, short as the dock allows."""

    def __init__(self, page: QWidget | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(page)

    def _width(self) -> int:
        page = self.widget()
        need = page.minimumSizeHint().width() if page is not None else 0
        bar = self.verticalScrollBar()
        return need + (bar.sizeHint().width() if bar is not None else 0)

    def minimumSizeHint(self) -> QSize:
        return QSize(self._width(), MIN_PAGE_HEIGHT)

    def sizeHint(self) -> QSize:
        page = self.widget()
        height = page.sizeHint().height() if page is not None else MIN_PAGE_HEIGHT
        return QSize(self._width(), max(height, MIN_PAGE_HEIGHT))


class BodyLayout(QVBoxLayout):
    """A vertical layout that does not trade height for width.

    A ``widgetResizable`` scroll area gives a widget whose layout has height-for-width (any
    word-wrapped label) its *preferred* height at the viewport's width as its least height:
    the dock's body would never shrink to the viewport and its tabs never scroll. Without it,
    the body's least height is the sum of its parts' least heights.
    """

    def hasHeightForWidth(self) -> bool:
        return False


class ScrollTabs(QTabWidget):
    """A ``QTabWidget`` that puts each page in a :class:`PageScroll`.

    Callers keep speaking of their pages: :meth:`widget`, :meth:`indexOf` and
    :meth:`setCurrentWidget` take and return the page, not its scroll area (:meth:`scroll_area`).
    """

    @overload
    def addTab(self, widget: QWidget | None, a1: str | None) -> int: ...
    @overload
    def addTab(self, widget: QWidget | None, icon: QIcon, label: str | None) -> int: ...
    def addTab(self, widget: QWidget | None, *args: Any, **kwargs: Any) -> int:
        """Add ``widget`` as a page (in a :class:`PageScroll`), with a title or an icon and a title."""
        return super().addTab(PageScroll(widget, self), *args, **kwargs)

    def scroll_area(self, index: int) -> PageScroll | None:
        area = super().widget(index)
        return area if isinstance(area, PageScroll) else None

    def widget(self, index: int) -> QWidget | None:
        area = self.scroll_area(index)
        return area.widget() if area is not None else super().widget(index)

    def indexOf(self, page: QWidget | None) -> int:
        for i in range(self.count()):
            if self.widget(i) is page:
                return i
        return super().indexOf(page)

    def setCurrentWidget(self, page: QWidget | None) -> None:
        index = self.indexOf(page)
        if index >= 0:
            self.setCurrentIndex(index)
