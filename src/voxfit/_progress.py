"""A minimal progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """``Progress(label, total)``; call ``update(done)``; ``close()`` clears the line. Silent unless enabled;
    `enabled` None: when the stream is a terminal and `total` exceeds `min_total` (short jobs need no bar)."""

    def __init__(self, label: str, total: int, enabled: bool | None = None, stream=None, min_total: int = 0):
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = total > min_total and (self.stream.isatty() if hasattr(self.stream, "isatty") else False)
        self.enabled = enabled
        self.label, self.total = label, max(1, int(total))
        self._last = 0.0
        self._start = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.1 and done < self.total):
            return
        self._last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {now - self._start:6.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (len(self.label) + 50) + "\r")
            self.stream.flush()
