"""Safety rules applied before anything reaches the arms.

The Interbotix driver neither clamps nor rate-limits, and the servos run without velocity
profiles (FACTS.md section 3), so every limit is enforced here:

* a chunk is accepted whole or rejected whole: its joint names must be exactly the robot's (in
  any order; it is reordered), its values finite, its size (K, D) with D = the robot's;
* every target is clamped to the per-joint position limits (grippers: their normalized range,
  which maps to [close, open] driver positions);
* the command moves at most ``max_velocity / control_rate`` per tick from the last command,
  which also makes the start-up ramp and every resume gradual.

:class:`CommandGuard` is the last stage before anything is published: it owns the last command
and produces every command (moves and holds alike), and its output is, by construction, inside
the position limits and within one rate-limit step of the previous output (its start pose is
clamped into the limits first). docs/safety.md lists every rule.

The limits come from :class:`~vla_policy_node.config.RobotConfig` (``robot.*`` in config/).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from vla_policy_node.chunk import ActionChunk, ChunkError
from vla_policy_node.config import RobotConfig


@dataclass(frozen=True)
class SafetyLimits:
    """Per-joint limits in action-vector units.

    Attributes:
        joint_names: the D joint names, in the order of every vector.
        position_min / position_max: (D,) position limits.
        max_step: (D,) largest change of the command per control tick.
    """

    joint_names: tuple[str, ...]
    position_min: np.ndarray
    position_max: np.ndarray
    max_step: np.ndarray

    def __post_init__(self) -> None:
        d = len(self.joint_names)
        for name in ("position_min", "position_max", "max_step"):
            values = np.array(getattr(self, name), dtype=np.float64)
            if values.shape != (d,) or not np.all(np.isfinite(values)):
                raise ValueError(f"{name} must be {d} finite values, got {values.tolist()}")
            values.setflags(write=False)
            object.__setattr__(self, name, values)
        if np.any(self.position_min >= self.position_max):
            bad = [n for n, lo, hi in zip(self.joint_names, self.position_min,
                                          self.position_max) if lo >= hi]
            raise ValueError(f"position_min >= position_max for {bad}")
        if np.any(self.max_step <= 0):
            raise ValueError(f"max_step must be > 0 for every joint: {self.max_step.tolist()}")

    @classmethod
    def from_robot(cls, robot: RobotConfig, control_rate_hz: float) -> "SafetyLimits":
        """Limits of ``robot`` at ``control_rate_hz`` (per-tick step = max_velocity / rate)."""
        if not (math.isfinite(control_rate_hz) and control_rate_hz > 0):
            raise ValueError(f"control_rate_hz must be > 0, got {control_rate_hz}")
        return cls(joint_names=tuple(robot.joint_names), position_min=robot.position_min,
                   position_max=robot.position_max,
                   max_step=robot.max_velocity / control_rate_hz)

    @property
    def dim(self) -> int:
        """D."""
        return len(self.joint_names)


@dataclass(frozen=True)
class SafeCommand:
    """The outcome of filtering one target.

    Attributes:
        command: (D,) the position to send.
        clamped: names of joints whose target the position limits clamped.
        rate_limited: names of joints whose motion the per-tick limit bounded.
    """

    command: np.ndarray
    clamped: tuple[str, ...]
    rate_limited: tuple[str, ...]


class SafetyFilter:
    """Validates chunks and turns targets into safe commands."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits
        self._index = {name: i for i, name in enumerate(limits.joint_names)}
        self._joint_names = np.array(limits.joint_names, dtype=object)
        self._neg_step = -limits.max_step

    def validate_chunk(self, chunk: ActionChunk) -> np.ndarray:
        """(K, D) actions of ``chunk`` in the robot's joint order.

        Raises:
            ChunkError: the joint names are not exactly the robot's, or the values are not
                finite (the whole chunk is rejected; nothing of it is played).
        """
        names = tuple(chunk.joint_names)
        if names != self.limits.joint_names:
            missing = [n for n in self.limits.joint_names if n not in names]
            unknown = [n for n in names if n not in self._index]
            if missing or unknown or len(names) != self.limits.dim:
                raise ChunkError(
                    f"chunk {chunk.chunk_id} joint names do not match the robot: "
                    f"missing {missing}, unknown {unknown} (D={len(names)}, "
                    f"robot D={self.limits.dim})")
        actions = np.asarray(chunk.actions, dtype=np.float64)
        if actions.shape[1] != self.limits.dim:
            raise ChunkError(
                f"chunk {chunk.chunk_id} has action dimension {actions.shape[1]}, "
                f"robot has {self.limits.dim}")
        if not np.all(np.isfinite(actions)):
            raise ChunkError(f"chunk {chunk.chunk_id} has non-finite actions")
        if names != self.limits.joint_names:
            order = [names.index(n) for n in self.limits.joint_names]
            actions = actions[:, order]
        return actions

    def clamp(self, target: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
        """(D,) target clamped to the position limits, and the names of clamped joints."""
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.limits.dim,) or not np.isfinite(target).all():
            raise ValueError(
                f"target must be {self.limits.dim} finite values, got {target.tolist()}")
        # minimum/maximum rather than np.clip: a few µs less per tick on (D,) vectors.
        clamped = np.minimum(np.maximum(target, self.limits.position_min),
                             self.limits.position_max)
        return clamped, self._names(clamped != target)

    def apply(self, target: np.ndarray, last_command: np.ndarray) -> SafeCommand:
        """Clamp ``target`` (D,) to the limits, then move from ``last_command`` (D,) toward it
        by at most ``max_step`` per joint.

        The result is always inside the limits: the final position clamp runs after the rate
        limit too. From a ``last_command`` inside the limits (every command of
        :class:`CommandGuard` is) that clamp can only shorten the step.
        """
        last = np.asarray(last_command, dtype=np.float64)
        if last.shape != (self.limits.dim,) or not np.isfinite(last).all():
            raise ValueError(
                f"last command must be {self.limits.dim} finite values, got {last.tolist()}")
        clamped, clamped_names = self.clamp(target)
        delta = clamped - last
        step = np.minimum(np.maximum(delta, self._neg_step), self.limits.max_step)
        command = np.minimum(np.maximum(last + step, self.limits.position_min),
                             self.limits.position_max)
        return SafeCommand(command=command, clamped=clamped_names,
                           rate_limited=self._names(step != delta))

    def _names(self, mask: np.ndarray) -> tuple[str, ...]:
        return tuple(self._joint_names[mask]) if mask.any() else ()

    def outside(self, pose: np.ndarray, margin: float) -> dict[str, float]:
        """Joints of ``pose`` (D,) outside the limits by more than ``margin``: name -> value.

        Non-finite values count as outside.
        """
        pose = np.asarray(pose, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~((pose >= self.limits.position_min - margin)
                    & (pose <= self.limits.position_max + margin))
        return {n: float(v) for n, v, hit in zip(self.limits.joint_names, pose, bad) if hit}


class CommandGuard:
    """The last stage before publishing: owns the last command and produces every command.

    Invariants (checked by the hypothesis test in test/test_control_properties.py):

    * every command is finite and inside ``position_min/max``;
    * consecutive commands differ by at most ``max_step`` per joint (up to float rounding);
    * the first command is within one ``max_step`` of the start pose clamped into the limits.

    A target with a non-finite entry (validation upstream rejects non-finite chunks, but merging
    targets near 1e308 could overflow) keeps that joint where it is, reported as clamped. Not
    thread-safe: the executor calls it under its lock.
    """

    def __init__(self, safety: SafetyFilter) -> None:
        self.safety = safety
        self._last: np.ndarray | None = None

    @property
    def started(self) -> bool:
        """Whether a command exists (after :meth:`start`); no copy, for the per-tick checks."""
        return self._last is not None

    @property
    def last(self) -> np.ndarray | None:
        """(D,) the last command, or None before :meth:`start`."""
        return None if self._last is None else self._last.copy()

    def start(self, pose: np.ndarray) -> tuple[str, ...]:
        """Start from ``pose`` (D,), clamped into the limits; returns the clamped joints.

        Raises:
            ValueError: ``pose`` is not D finite values.
        """
        clamped, names = self.safety.clamp(pose)
        self._last = clamped
        return names

    def step(self, target: np.ndarray) -> SafeCommand:
        """The next command toward ``target`` (D,) under the limits and the rate limit."""
        if self._last is None:
            raise RuntimeError("CommandGuard.step before start()")
        target = np.asarray(target, dtype=np.float64)
        held: tuple[str, ...] = ()
        if target.shape == (self.safety.limits.dim,):
            finite = np.isfinite(target)
            if not finite.all():
                # E.g. merged sums of huge targets overflowing: hold those joints, count them.
                target = np.where(finite, target, self._last)
                held = self.safety._names(~finite)
        safe = self.safety.apply(target, self._last)
        self._last = safe.command
        clamped = safe.clamped + tuple(n for n in held if n not in safe.clamped)
        return SafeCommand(safe.command.copy(), clamped, safe.rate_limited)

    def hold(self) -> np.ndarray | None:
        """(D,) the last command again (no motion), or None before :meth:`start`."""
        return self.last
