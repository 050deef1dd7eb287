"""A dependency-free progress line with throughput and ETA for long training runs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Counts work units (training steps) toward ``total`` and prints a bar with an ETA.

    On a terminal the line is redrawn in place; elsewhere (logs, CI) one line is printed per
    update. The ETA uses the rate measured since this object was created, so a resumed run
    predicts from its own speed, not from the steps it skipped.
    """

    def __init__(
        self,
        total: int,
        done: int = 0,
        stream: TextIO | None = None,
        width: int = 24,
        enabled: bool = True,
    ):
        self.total = total
        self._enabled = enabled  # False: counts, prints nothing (a run's other processes)
        self.done = done
        self._start_done = done
        self._start = time.perf_counter()
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._tty = getattr(self._stream, "isatty", lambda: False)()

    def eta_seconds(self) -> float | None:
        elapsed = time.perf_counter() - self._start
        progressed = self.done - self._start_done
        if progressed <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / progressed

    def update(self, done: int, message: str = "") -> None:
        self.done = done
        fraction = min(1.0, done / max(1, self.total))
        filled = round(fraction * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        eta = self.eta_seconds()
        eta_text = "ETA --" if eta is None else f"ETA {format_seconds(eta)}"
        line = f"[{bar}] {100 * fraction:5.1f}% {eta_text} {message}".rstrip()
        if not self._enabled:
            return
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._tty:
            self._stream.write("\n")
            self._stream.flush()
