"""Progress of a long command on stderr: one updating line on a terminal; otherwise a line every 10 %
once the command has run for 2 s (a quick one stays quiet)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last_t = 0.0
        self._last_decile = -1
        self._start = time.monotonic()

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = max(total, 1)
        if not self.enabled:
            return
        pct = min(100, done * 100 // self.total)
        if self.tty:
            now = time.monotonic()
            if now - self._last_t >= 0.2 or done >= self.total:
                self._last_t = now
                self.stream.write(f"\r{self.label}: {done}/{self.total} ({pct}%) {now - self._start:.0f} s ")
                self.stream.flush()
        elif pct // 10 > self._last_decile and time.monotonic() - self._start >= 2.0:  # quiet when quick
            self._last_decile = pct // 10
            self.stream.write(f"{self.label}: {done}/{self.total} ({pct}%)\n")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
