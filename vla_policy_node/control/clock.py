"""The control clock: ticks on absolute deadlines, on any time source, with timing records.

Deadline ``n`` is ``start + n * period``: a late wake-up never shifts the ticks after it (no
drift). A wake-up later than a whole period skips the missed deadlines (counted as overruns)
instead of bursting to catch up; a clock that jumps backwards (a simulation reset on
``/clock``) or far forwards (the first ``/clock`` message) re-anchors the grid.

The time source is pluggable: :class:`MonotonicTimeSource` (wall clock), :class:`FakeTimeSource`
(tests: time advances only when the clock sleeps) and, in the node, one backed by the ROS clock
so that ``use_sim_time`` works.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math
import os
import threading
import time
from typing import Callable, Iterator, Protocol

import numpy as np


class TimeSource(Protocol):
    """A clock the control loop can read and sleep on (seconds)."""

    def now(self) -> float:
        """Current time in seconds."""

    def sleep_until(self, deadline: float) -> bool:
        """Sleep until ``deadline`` or a backward time jump; False on shutdown."""


def set_realtime_priority(priority: int) -> str | None:
    """Run the calling thread under SCHED_FIFO at ``priority`` (1-99); 0 leaves it alone.

    A control loop sharing its cores with model inference wakes late when the scheduler
    treats it like any other thread; real-time priority is what ros2_control uses. Returns
    None on success (or priority 0), else why it could not (no CAP_SYS_NICE / rtprio limit),
    so callers log it and carry on at normal priority.
    """
    if priority == 0:
        return None
    if not 1 <= priority <= 99:
        raise ValueError(f"real-time priority must be 0 (off) or 1-99, got {priority}")
    if not hasattr(os, "sched_setscheduler"):
        return "SCHED_FIFO is not available on this platform"
    try:
        # pid 0 = the calling thread on Linux.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, PermissionError) as exc:
        return f"cannot set SCHED_FIFO priority {priority}: {exc}"
    return None


class MonotonicTimeSource:
    """``time.monotonic`` with an interruptible sleep (``stop()`` wakes it)."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> bool:
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._stop.wait(remaining)
        return False

    def stop(self) -> None:
        """Wake every sleeper; later sleeps return False at once."""
        self._stop.set()


class FakeTimeSource:
    """Deterministic time for tests: sleeping jumps to the deadline plus an optional delay.

    ``delay`` (a callable of the deadline returning seconds) simulates late wake-ups.
    """

    def __init__(self, start: float = 0.0,
                 delay: Callable[[float], float] | None = None) -> None:
        self.time = float(start)
        self.delay = delay
        self.stopped = False
        self._jumped_back = False

    def now(self) -> float:
        return self.time

    def sleep_until(self, deadline: float) -> bool:
        if self.stopped:
            return False
        if self._jumped_back:
            # Like a ROS clock source: a backward jump wakes the sleeper at once.
            self._jumped_back = False
            return True
        extra = self.delay(deadline) if self.delay is not None else 0.0
        self.time = max(self.time, deadline + extra)
        return True

    def advance(self, seconds: float) -> None:
        """Move time by ``seconds`` (negative: a backward jump, which wakes the sleeper)."""
        self.time += seconds
        if seconds < 0:
            self._jumped_back = True


@dataclass(frozen=True)
class Tick:
    """One control tick.

    Attributes:
        index: tick number since the clock started (skipped deadlines are not numbered).
        deadline: when the tick was due, seconds.
        time: when it actually woke, seconds.
        error: ``time - deadline`` (lateness), seconds.
        skipped: deadlines missed just before this tick (overrun).
    """

    index: int
    deadline: float
    time: float
    error: float
    skipped: int


@dataclass(frozen=True)
class ClockStats:
    """Timing summary of the recorded ticks (errors in seconds)."""

    ticks: int
    overruns: int
    error_p50: float
    error_p99: float
    error_max: float
    achieved_rate_hz: float


class ControlClock:
    """Yields ticks at ``rate_hz`` on absolute deadlines of ``source``.

    Thread-safe for readers: :meth:`stats` and :meth:`achieved_rate` may be called from other
    threads while :meth:`ticks` runs.
    """

    def __init__(self, source: TimeSource, rate_hz: float, history: int = 100_000,
                 rate_window: float = 1.0, jump_threshold: float = 1.0) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"control rate must be > 0 Hz, got {rate_hz}")
        if history < 1:
            raise ValueError(f"history must be >= 1 tick, got {history}")
        if not (math.isfinite(rate_window) and rate_window > 0):
            raise ValueError(f"rate_window must be > 0 s, got {rate_window}")
        self.source = source
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.rate_window = rate_window
        # Lateness beyond this is a time jump (first /clock message, sim fast-forward), not a
        # slow loop: the grid restarts instead of counting thousands of overruns.
        self.jump_threshold = max(float(jump_threshold), 2.0 * self.period)
        self._lock = threading.Lock()
        self._errors: deque[float] = deque(maxlen=history)
        self._recent: deque[float] = deque()
        self._ticks = 0
        self._overruns = 0
        self._reanchors = 0

    def ticks(self, stop: threading.Event | None = None) -> Iterator[Tick]:
        """Tick forever (until ``stop`` is set or the source's sleep returns False)."""
        start = self.source.now()
        n = 0
        index = 0
        while stop is None or not stop.is_set():
            deadline = start + n * self.period
            if not self.source.sleep_until(deadline):
                return
            if stop is not None and stop.is_set():
                return
            now = self.source.now()
            if now < deadline - self.period or now - deadline > self.jump_threshold:
                # Time jumped (simulation reset, first /clock): restart the grid from here.
                start, n = now, 0
                with self._lock:
                    self._reanchors += 1
                    self._recent.clear()
                deadline = now
            skipped = 0
            if now - deadline >= self.period:
                # Missed deadlines: skip to the latest one due, on the same grid.
                skipped = int((now - deadline) // self.period)
                n += skipped
                deadline = start + n * self.period
            tick = Tick(index=index, deadline=deadline, time=now, error=now - deadline,
                        skipped=skipped)
            self._record(tick)
            yield tick
            index += 1
            n += 1

    def _record(self, tick: Tick) -> None:
        with self._lock:
            self._ticks += 1
            self._overruns += tick.skipped
            self._errors.append(tick.error)
            self._recent.append(tick.time)
            while self._recent and self._recent[0] <= tick.time - self.rate_window:
                self._recent.popleft()

    @property
    def reanchors(self) -> int:
        """How often time jumped and the deadline grid restarted."""
        with self._lock:
            return self._reanchors

    def achieved_rate(self, now: float | None = None) -> float:
        """Ticks per second over the last ``rate_window`` seconds (0 before two ticks)."""
        with self._lock:
            times = [t for t in self._recent
                     if now is None or t > now - self.rate_window]
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        if now is not None:
            # A loop that stopped ticking must read as slow, not as its last good rate.
            span = max(span, now - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0

    def errors(self) -> np.ndarray:
        """Recorded tick errors (lateness), seconds, oldest first."""
        with self._lock:
            return np.fromiter(self._errors, dtype=np.float64)

    def stats(self, now: float | None = None) -> ClockStats:
        """Summary of the recorded ticks."""
        errors = self.errors()
        with self._lock:
            ticks, overruns = self._ticks, self._overruns
        if errors.size:
            p50, p99 = np.percentile(errors, [50, 99])
            worst = float(errors.max())
        else:
            p50 = p99 = worst = 0.0
        return ClockStats(ticks=ticks, overruns=overruns, error_p50=float(p50),
                          error_p99=float(p99), error_max=worst,
                          achieved_rate_hz=self.achieved_rate(now))
