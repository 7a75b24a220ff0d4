"""Resampling time-stamped streams onto a reference clock (latest-before, with a maximum age)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Alignment:
    """Streams resampled on a uniform clock.

    Attributes:
        ticks: (T,) int64 clock times, ns.
        indices: stream -> (T,) int64 index of the latest message at or before each tick
            (-1: none yet).
        ages: stream -> (T,) int64 age of that message at the tick, ns (huge when none).
        valid: (T,) bool, every stream fresh (age <= max_age) at the tick.
        stale: stream -> (T,) bool, the stream was too old (or absent) at the tick.
    """

    ticks: np.ndarray
    indices: dict[str, np.ndarray]
    ages: dict[str, np.ndarray]
    valid: np.ndarray
    stale: dict[str, np.ndarray]


def make_clock(times: Mapping[str, np.ndarray], rate_hz: float) -> np.ndarray:
    """(T,) int64 ticks at ``rate_hz`` from the moment every stream has a message to the
    last message of the stream that ends first.

    Args:
        times: stream -> (N,) int64 sorted message times, ns; every stream non-empty.

    Raises:
        ValueError: a stream is empty, or the streams never overlap in time.
    """
    empty = [name for name, t in times.items() if len(t) == 0]
    if empty:
        raise ValueError(f"streams without messages: {empty}")
    start = max(int(t[0]) for t in times.values())
    end = min(int(t[-1]) for t in times.values())
    if end < start:
        first = max(times, key=lambda k: int(times[k][0]))
        last = min(times, key=lambda k: int(times[k][-1]))
        raise ValueError(
            f"streams do not overlap in time: {first!r} starts at {start} ns after {last!r} "
            f"ends at {end} ns")
    period = int(round(1e9 / rate_hz))
    return start + np.arange((end - start) // period + 1, dtype=np.int64) * period


def align(times: Mapping[str, np.ndarray], ticks: np.ndarray, max_age_ns: int) -> Alignment:
    """Latest-before alignment of every stream on ``ticks``.

    Args:
        times: stream -> (N,) int64 sorted message times, ns.
        ticks: (T,) int64 clock, ns.
        max_age_ns: a message older than this at a tick does not count.
    """
    indices: dict[str, np.ndarray] = {}
    ages: dict[str, np.ndarray] = {}
    stale: dict[str, np.ndarray] = {}
    valid = np.ones(len(ticks), dtype=bool)
    for name, t in times.items():
        idx = np.searchsorted(t, ticks, side="right").astype(np.int64) - 1
        age = np.where(idx >= 0, ticks - t[np.maximum(idx, 0)], np.iinfo(np.int64).max)
        indices[name] = idx
        ages[name] = age
        stale[name] = age > max_age_ns
        valid &= ~stale[name]
    return Alignment(ticks, indices, ages, valid, stale)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of True in a (T,) bool mask."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
