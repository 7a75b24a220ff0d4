"""Rate-limited logging: every clamp and rejection is logged, but a 500 Hz loop never floods."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable


class ThrottledLogger:
    """Logs each ``key`` at most once per ``interval`` seconds, reporting what it suppressed.

    The first occurrence of a key is always logged; later ones within the interval are counted
    and the count is appended to the next line of that key.
    """

    def __init__(self, logger: logging.Logger, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval >= 0:
            raise ValueError(f"log interval must be >= 0 s, got {interval}")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str) -> bool:
        """Log ``message`` under ``key`` unless throttled; True if it was emitted."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message = f"{message} ({suppressed} similar suppressed)"
        self.logger.log(level, message)
        return True

    def warning(self, key: str, message: str) -> bool:
        return self.log(logging.WARNING, key, message)

    def info(self, key: str, message: str) -> bool:
        return self.log(logging.INFO, key, message)
