"""Collect garbage on the GUI thread only.

Python's cyclic garbage collector runs on whichever thread happens to allocate when a threshold is crossed,
so a worker thread (loading a model, sampling) can end up destroying Qt objects that live on the GUI thread,
and Qt crashes. The guard switches automatic collection off and collects from a timer on the GUI thread.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer


class MainThreadGC(QObject):
    """While it runs, garbage is collected every `interval_ms` on the thread that created it (the GUI's)."""

    def __init__(self, interval_ms: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._collect)
        self._was_enabled = gc.isenabled()
        self._ticks = 0

    def start(self) -> "MainThreadGC":
        gc.disable()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    def _collect(self) -> None:
        # The young generations at every tick (cheap), everything every tenth.
        self._ticks += 1
        gc.collect(2 if self._ticks % 10 == 0 else 1)
