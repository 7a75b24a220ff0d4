"""The time-indexed action buffer: merged chunks as a plan of (time, target) samples.

Action ``i`` of a chunk targets the absolute time ``stamp + i * step_period`` (stamp = capture
time of the observation). The buffer keeps the *merged plan*: sample times ``(N,)`` and targets
``(N, D)``. Each control tick asks for the target at "now", linearly interpolated between the
bracketing samples, so a 50 Hz control loop plays 25 Hz chunks smoothly; samples in the past are
dropped (latency compensation: the part of a chunk that the model's latency already consumed
is never played).

A new chunk is merged into the plan on its own time grid. The merged plan keeps the old samples
before the new chunk's first sample and ends at the new chunk's last sample (the newest
prediction is authoritative about the future). Where the two overlap:

* ``replace``: the new chunk wins at once (the rate limiter downstream still bounds any jump);
* ``crossfade`` (default): ``(1 - a) * old + a * new`` with ``a`` rising linearly from 0 at
  the insertion time to 1 after ``crossfade_window`` seconds: no jump at hand-over;
* ``temporal_ensemble`` (ACT): every prediction made for a time is averaged with weights
  ``exp(-k * j)``, ``j`` = 0 for the oldest prediction of that time (the oldest weighs most).
  The plan keeps the weighted sums, weights and prediction counts per sample; where grids do
  not align, the old sums are interpolated onto the new grid.
"""

from __future__ import annotations

from dataclasses import dataclass
import enum
import math
import threading

import numpy as np

from vla_policy_node.chunk import ChunkError


class MergeStrategy(str, enum.Enum):
    """How a new chunk is merged with the plan it overlaps."""

    REPLACE = "replace"
    CROSSFADE = "crossfade"
    TEMPORAL_ENSEMBLE = "temporal_ensemble"

    @classmethod
    def parse(cls, value: "str | MergeStrategy") -> "MergeStrategy":
        """The strategy named ``value``; ValueError naming the valid ones otherwise."""
        if isinstance(value, MergeStrategy):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(
                f"unknown merge strategy {value!r}; expected one of "
                f"{[m.value for m in cls]}") from None


@dataclass(frozen=True)
class MergeConfig:
    """Merge settings.

    Attributes:
        strategy: replace, crossfade or temporal_ensemble.
        crossfade_window: seconds over which a new chunk fades in (crossfade; 0 = replace).
        temporal_ensemble_k: ``k`` of the ACT weights ``exp(-k * j)`` (>= 0).
    """

    strategy: MergeStrategy = MergeStrategy.CROSSFADE
    crossfade_window: float = 0.2
    temporal_ensemble_k: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", MergeStrategy.parse(self.strategy))
        if not (math.isfinite(self.crossfade_window) and self.crossfade_window >= 0):
            raise ValueError(f"crossfade_window must be >= 0 seconds, got {self.crossfade_window}")
        if not (math.isfinite(self.temporal_ensemble_k) and self.temporal_ensemble_k >= 0):
            raise ValueError(
                f"temporal_ensemble_k must be a finite number >= 0, "
                f"got {self.temporal_ensemble_k}")


@dataclass(frozen=True)
class InsertResult:
    """What merging one chunk did.

    Attributes:
        dropped_past: actions of the chunk already in the past (never played).
        overlapped: samples of the new chunk merged with an existing plan.
        horizon: seconds from the insertion time to the end of the plan.
    """

    dropped_past: int
    overlapped: int
    horizon: float


class ActionBuffer:
    """Thread-safe plan of future targets, fed with chunks, sampled at control ticks."""

    def __init__(self, dim: int, merge: MergeConfig | None = None) -> None:
        if int(dim) != dim or dim <= 0:
            raise ValueError(f"action dimension must be a positive integer, got {dim}")
        self.dim = int(dim)
        self.merge = merge or MergeConfig()
        self._lock = threading.Lock()
        self._times = np.empty(0)
        # Weighted sums / weights / prediction counts: the target is sums / weights. For
        # replace and crossfade the weight is always 1 and the count is unused.
        self._sums = np.empty((0, self.dim))
        self._weights = np.empty(0)
        self._counts = np.empty(0)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        with self._lock:
            return int(self._times.size)

    def end_time(self) -> float | None:
        """Target time of the last sample, or None when empty."""
        with self._lock:
            return float(self._times[-1]) if self._times.size else None

    def remaining_horizon(self, now: float) -> float:
        """Seconds from ``now`` to the last sample (0 when empty or exhausted)."""
        with self._lock:
            if not self._times.size:
                return 0.0
            return max(0.0, float(self._times[-1]) - now)

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """Copy of the plan: times (N,) and targets (N, D)."""
        with self._lock:
            return self._times.copy(), self._values()

    def sample(self, now: float) -> np.ndarray | None:
        """(D,) target for time ``now``, or None when the plan has nothing for ``now``.

        Interpolates linearly between the samples around ``now``; before the first sample the
        first target is returned (a chunk stamped slightly ahead of this clock is still valid).
        Samples older than the one just before ``now`` are dropped.
        """
        with self._lock, np.errstate(over="ignore", invalid="ignore"):
            times = self._times
            if not times.size or now > times[-1]:
                self._drop_before(now)
                return None
            j = int(np.searchsorted(times, now, side="right"))
            values_lo = self._sums[max(j - 1, 0)] / self._weights[max(j - 1, 0)]
            if j == 0:
                target = values_lo.copy()
            elif j >= times.size:
                target = values_lo.copy()
            else:
                t0, t1 = times[j - 1], times[j]
                values_hi = self._sums[j] / self._weights[j]
                a = (now - t0) / (t1 - t0)
                target = (1.0 - a) * values_lo + a * values_hi
            self._drop_before(now)
            return target

    # ------------------------------------------------------------------ updates
    def clear(self) -> None:
        """Forget the plan."""
        with self._lock:
            self._set(np.empty(0), np.empty((0, self.dim)), np.empty(0), np.empty(0))

    def insert(self, times: np.ndarray, actions: np.ndarray, now: float) -> InsertResult:
        """Merge a chunk into the plan.

        Args:
            times: (K,) strictly increasing absolute target times, seconds.
            actions: (K, D) finite targets.
            now: the insertion time (same clock as ``times``).

        Raises:
            ChunkError: shapes differ from (K,) / (K, D), times not increasing, values not
                finite, or every action already lies in the past (expired chunk).
        """
        times = np.asarray(times, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        if times.ndim != 1 or actions.shape != (times.size, self.dim) or times.size == 0:
            raise ChunkError(
                f"expected times (K,) and actions (K, {self.dim}), got {times.shape} and "
                f"{actions.shape}")
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(actions))):
            raise ChunkError("chunk times or actions are not finite")
        if times.size > 1 and np.any(np.diff(times) <= 0):
            raise ChunkError("chunk times must increase strictly")
        if times[-1] < now:
            raise ChunkError(
                f"chunk expired: its last action targets {times[-1]:.3f} s, "
                f"{now - times[-1]:.3f} s before now ({now:.3f} s)")
        # Keep the last past action so that "now" can be interpolated; drop the older ones.
        first = max(int(np.searchsorted(times, now, side="right")) - 1, 0)
        new_t, new_a = times[first:], actions[first:]
        # Absurd finite targets (~1e308) may overflow when merged: the result is inf/NaN in the
        # plan, which the command guard holds and counts; no warning spam per chunk.
        with self._lock, np.errstate(over="ignore", invalid="ignore"):
            old_t = self._times
            overlapped = 0
            strategy = self.merge.strategy
            if old_t.size:
                keep = old_t < new_t[0]
                # Before its first sample the old plan's target is its first value (as in
                # sample()), so everything up to its end counts as overlap.
                covered = new_t <= old_t[-1]
                overlapped = int(np.count_nonzero(covered))
            if not old_t.size or overlapped == 0 or strategy is MergeStrategy.REPLACE:
                if old_t.size and strategy is not MergeStrategy.REPLACE:
                    prefix = (old_t[keep], self._sums[keep], self._weights[keep],
                              self._counts[keep])
                else:
                    prefix = (np.empty(0), np.empty((0, self.dim)), np.empty(0), np.empty(0))
                ones = np.ones(new_t.size)
                self._set(np.concatenate([prefix[0], new_t]),
                          np.concatenate([prefix[1], new_a]),
                          np.concatenate([prefix[2], ones]),
                          np.concatenate([prefix[3], ones]))
            elif strategy is MergeStrategy.CROSSFADE:
                old_vals = self._interp(new_t, self._values())
                window = self.merge.crossfade_window
                if window > 0:
                    alpha = np.clip((new_t - now) / window, 0.0, 1.0)
                else:
                    alpha = np.ones(new_t.size)
                alpha = np.where(covered, alpha, 1.0)[:, None]
                merged = (1.0 - alpha) * old_vals + alpha * new_a
                ones = np.ones(new_t.size)
                self._set(np.concatenate([old_t[keep], new_t]),
                          np.concatenate([self._values()[keep], merged]),
                          np.concatenate([np.ones(int(keep.sum())), ones]),
                          np.concatenate([self._counts[keep], ones]))
            else:  # temporal ensemble
                old_sums = np.where(covered[:, None], self._interp(new_t, self._sums), 0.0)
                old_w = np.where(covered, self._interp(new_t, self._weights), 0.0)
                old_n = np.where(covered, np.rint(self._interp(new_t, self._counts)), 0.0)
                w = np.exp(-self.merge.temporal_ensemble_k * old_n)
                self._set(np.concatenate([old_t[keep], new_t]),
                          np.concatenate([self._sums[keep], old_sums + w[:, None] * new_a]),
                          np.concatenate([self._weights[keep], old_w + w]),
                          np.concatenate([self._counts[keep], old_n + 1.0]))
            self._drop_before(now)
            horizon = max(0.0, float(self._times[-1]) - now)
        return InsertResult(dropped_past=first, overlapped=overlapped, horizon=horizon)

    # ------------------------------------------------------------------ internals
    def _values(self) -> np.ndarray:
        return self._sums / self._weights[:, None] if self._times.size else self._sums.copy()

    def _interp(self, t: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Linear interpolation of per-sample ``values`` ((N,) or (N, D)) at times ``t``."""
        if values.ndim == 1:
            return np.interp(t, self._times, values)
        return np.stack([np.interp(t, self._times, values[:, d])
                         for d in range(values.shape[1])], axis=1)

    def _set(self, times: np.ndarray, sums: np.ndarray, weights: np.ndarray,
             counts: np.ndarray) -> None:
        self._times, self._sums, self._weights, self._counts = times, sums, weights, counts

    def _drop_before(self, now: float) -> None:
        """Drop samples older than the last one at or before ``now`` (lock held)."""
        j = int(np.searchsorted(self._times, now, side="right")) - 1
        if j > 0:
            self._set(self._times[j:], self._sums[j:], self._weights[j:], self._counts[j:])
