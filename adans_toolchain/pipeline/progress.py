"""Progress lines on stderr: a live bar on a terminal, one line per step otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open_bar = False
        self.start = time.perf_counter()

    def _clear_bar(self) -> None:
        if self._open_bar:
            self.stream.write("\n")
            self._open_bar = False

    def step(self, message: str) -> None:
        if self.quiet:
            return
        self._clear_bar()
        self.stream.write(f"[{time.perf_counter() - self.start:7.1f}s] {message}\n")
        self.stream.flush()

    def bar(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        width = 24
        filled = int(width * done / max(total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {message}"
        if self.live:
            self.stream.write("\r" + line[:160].ljust(100))
            self._open_bar = True
        else:
            self.stream.write(f"[{time.perf_counter() - self.start:7.1f}s] {line}\n")
        self.stream.flush()

    def done(self) -> None:
        self._clear_bar()
