"""A progress line for long memory scans, on a terminal's stderr only."""
from __future__ import annotations

import time
from typing import TextIO

_GIB = 1024 ** 3


class TerminalProgress:
    """Callable progress(done, total) that redraws one status line at most ten times a second."""

    def __init__(self, stream: TextIO, label: str = "searching memory"):
        self.stream = stream
        self.label = label
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 or total <= 0:
            return
        self._last = now
        self.stream.write(f"\r{self.label}: {100 * done // total:3d}% ({done / _GIB:.1f} of {total / _GIB:.1f} GiB)")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()
            self._drawn = False
