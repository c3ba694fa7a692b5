"""Tie a widget's background work to the widget being open.

napari's dock ✕ calls ``remove_dock_widget``, which only unparents the widget (``setParent(None)``):
the widget lives on, so Qt's ``destroyed`` never fires. :func:`on_close` calls ``callback``
when the widget leaves its dock (its parent becomes None after it had one) or when it is
destroyed (the viewer closes). ``callback`` must not need the widget.
"""
from __future__ import annotations

from typing import Callable

from qtpy.QtCore import QEvent, QObject


class _CloseWatch(QObject):
    def __init__(self, widget, callback: Callable[[], None]):
        super().__init__(widget)
        self._callback = callback
        self._had_parent = widget.parent() is not None
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is None and self._had_parent:
                self._callback()
            self._had_parent = obj.parent() is not None
        return False


def on_close(widget, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever ``widget``'s dock is closed, and when the widget is destroyed;
    ``callback`` stops whatever runs at that moment (it must be safe to call when nothing does)."""
    _CloseWatch(widget, callback)
    widget.destroyed.connect(lambda *_: callback())
