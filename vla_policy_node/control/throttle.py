"""Rate-limited logging: every clamp and rejection is counted, but a 500 Hz loop never floods."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

MAX_INTERVAL = 60.0


class ThrottledLogger:
    """Logs the first occurrence of each ``key`` at once, then a count per period.

    While a key keeps coming, its period doubles after each line that reported suppressed
    occurrences (``interval``, 2x, 4x, ... up to ``max_interval``), so a warning repeated every
    tick becomes one line, then a periodic count (``... (480 similar in the last 16 s)``)
    instead of one line per second. A key that stayed quiet for two periods starts over at
    ``interval``.
    """

    def __init__(self, logger: logging.Logger, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 max_interval: float = MAX_INTERVAL) -> None:
        if not interval >= 0:
            raise ValueError(f"log interval must be >= 0 s, got {interval}")
        self.logger = logger
        self.interval = interval
        self.max_interval = max(max_interval, interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._period: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str) -> bool:
        """Log ``message`` under ``key`` unless throttled; True if it was emitted."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            period = self._period.get(key, self.interval)
            if last is not None and now - last < period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            suppressed = self._suppressed.pop(key, 0)
            if last is None or now - last >= 2 * period:
                self._period[key] = self.interval  # a new burst
            elif suppressed:
                self._period[key] = min(2 * max(period, 1e-3), self.max_interval)
            self._last[key] = now
        if suppressed:
            message = f"{message} ({suppressed} similar in the last {now - last:.0f} s)"
        self.logger.log(level, message)
        return True

    def warning(self, key: str, message: str) -> bool:
        return self.log(logging.WARNING, key, message)

    def info(self, key: str, message: str) -> bool:
        return self.log(logging.INFO, key, message)
