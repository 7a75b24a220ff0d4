"""The executor's decisions: which command to send at each control tick, and when to hold.

:class:`ExecutorCore` combines the action buffer, the safety filter and the measured joint
states into a small state machine (the states of ``vla_msgs/ExecutorStatus``):

* IDLE: nothing commanded yet. The first target waits for a fresh measured joint state;
  nothing is sent before it.
* RAMPING: moving from the measured pose (start-up) or from a held pose (after a hold, pause
  or stop) toward the plan; ends at the first tick the rate limit does not bound.
* RUNNING: playing the plan. A tick without a target (buffer dry) repeats the last command and
  counts as starved; after ``stale_timeout`` seconds without a target the state is HOLDING.
* HOLDING: the last command is repeated (no motion) until a chunk brings a target again.
* PAUSED: holding by request; chunks are still merged into the (time-indexed) plan.
* STOPPED: holding by request; the plan is cleared and chunks are rejected until resume.
  After a reset (a stop that also forgets the last command) nothing is sent until resume and
  a new chunk, which ramps from the measured pose again.

Nothing here imports rclpy; the node feeds it messages converted to numpy and publishes what
:meth:`ExecutorCore.tick` returns. All methods are thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import enum
import logging
import math
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from vla_policy_node.chunk import ActionChunk, ChunkError
from vla_policy_node.config import RobotConfig
from vla_policy_node.control.arms import ArmMapper, JointStateError
from vla_policy_node.control.buffer import ActionBuffer, MergeConfig, MergeStrategy
from vla_policy_node.control.safety import SafetyFilter, SafetyLimits
from vla_policy_node.control.throttle import ThrottledLogger

logger = logging.getLogger(__name__)


class ExecutorState(enum.IntEnum):
    """Executor states; values equal the ``vla_msgs/ExecutorStatus`` STATE_* constants."""

    IDLE = 0
    RAMPING = 1
    RUNNING = 2
    HOLDING = 3
    PAUSED = 4
    STOPPED = 5


@dataclass(frozen=True)
class ExecutorConfig:
    """Executor settings (the ``chunk_executor`` section of config/aloha.yaml).

    Attributes:
        control_rate_hz: control ticks per second.
        merge: how overlapping chunks merge.
        stale_timeout: seconds without a valid target before the executor holds.
        joint_state_timeout: joint states older than this (s) are not used for the ramp.
        max_future_stamp: chunks stamped more than this (s) ahead of the executor's clock are
            rejected (a clock mismatch, e.g. sim time on one side only).
        log_interval: minimum seconds between two log lines of the same kind.
        realtime_priority: SCHED_FIFO priority of the control thread (0 = normal scheduling).
    """

    control_rate_hz: float = 50.0
    merge: MergeConfig = field(default_factory=MergeConfig)
    stale_timeout: float = 0.2
    joint_state_timeout: float = 1.0
    max_future_stamp: float = 0.5
    log_interval: float = 1.0
    realtime_priority: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_rate_hz) and 0 < self.control_rate_hz <= 5000):
            raise ValueError(f"control_rate_hz must be in (0, 5000], got {self.control_rate_hz}")
        for name in ("stale_timeout", "joint_state_timeout", "max_future_stamp"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if not (math.isfinite(self.log_interval) and self.log_interval >= 0):
            raise ValueError(f"log_interval must be >= 0 seconds, got {self.log_interval}")
        if int(self.realtime_priority) != self.realtime_priority or not (
                0 <= self.realtime_priority <= 99):
            raise ValueError(
                f"realtime_priority must be 0 (off) or 1-99, got {self.realtime_priority}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ExecutorConfig":
        """Build from the node's flat parameters (missing keys take the defaults)."""
        defaults = cls()
        merge_defaults = defaults.merge

        def get(key: str, default: float) -> float:
            return float(params.get(key, default))
        return cls(
            control_rate_hz=get("control_rate_hz", defaults.control_rate_hz),
            merge=MergeConfig(
                strategy=MergeStrategy.parse(
                    params.get("merge_strategy", merge_defaults.strategy.value)),
                crossfade_window=get("crossfade_window", merge_defaults.crossfade_window),
                temporal_ensemble_k=get("temporal_ensemble_k",
                                        merge_defaults.temporal_ensemble_k)),
            stale_timeout=get("stale_timeout", defaults.stale_timeout),
            joint_state_timeout=get("joint_state_timeout", defaults.joint_state_timeout),
            max_future_stamp=get("max_future_stamp", defaults.max_future_stamp),
            log_interval=get("log_interval", defaults.log_interval),
            realtime_priority=int(params.get("realtime_priority", defaults.realtime_priority)))


@dataclass
class ExecutorCounters:
    """Counters since start (see ``vla_msgs/ExecutorStatus``)."""

    ticks: int = 0
    commands: int = 0
    starved_ticks: int = 0
    clamped_commands: int = 0
    rate_limited_commands: int = 0
    accepted_chunks: int = 0
    rejected_chunks: int = 0
    rejected_joint_states: int = 0
    dropped_past_actions: int = 0


@dataclass(frozen=True)
class ExecutorSnapshot:
    """The executor's status at one time.

    Attributes:
        state: current state.
        remaining_horizon: seconds from now to the last planned action.
        remaining_steps: control ticks that horizon covers.
        last_chunk_id: id of the last accepted chunk (0 before any).
        counters: a copy of the counters.
    """

    state: ExecutorState
    remaining_horizon: float
    remaining_steps: int
    last_chunk_id: int
    counters: ExecutorCounters


@dataclass(frozen=True)
class ChunkVerdict:
    """Whether a chunk was accepted, and why not."""

    accepted: bool
    reason: str = ""


class ExecutorCore:
    """Decides the command of every control tick (see the module docstring)."""

    def __init__(self, robot: RobotConfig, config: ExecutorConfig | None = None) -> None:
        self.robot = robot
        self.config = config or ExecutorConfig()
        self.limits = SafetyLimits.from_robot(robot, self.config.control_rate_hz)
        self.safety = SafetyFilter(self.limits)
        self.buffer = ActionBuffer(robot.dim, self.config.merge)
        self.arms = ArmMapper(robot)
        self.counters = ExecutorCounters()
        self._log = ThrottledLogger(logger, self.config.log_interval)
        self._lock = threading.RLock()
        self._state = ExecutorState.IDLE
        self._last_command: np.ndarray | None = None
        self._last_target_time: float | None = None
        self._last_stamp: float | None = None
        self._last_chunk_id = 0

    # ------------------------------------------------------------------ inputs
    def submit_chunk(self, chunk: ActionChunk, now: float) -> ChunkVerdict:
        """Validate ``chunk`` and merge it into the plan; never raises for a bad chunk.

        Rejected (whole, counted, logged): wrong joint names or size, non-finite values,
        stamp older than the last accepted chunk's, stamp too far in the future, every
        action already past, or the executor is stopped.
        """
        with self._lock:
            try:
                if self._state is ExecutorState.STOPPED:
                    raise ChunkError("executor is stopped (call resume)")
                actions = self.safety.validate_chunk(chunk)
                if chunk.stamp > now + self.config.max_future_stamp:
                    raise ChunkError(
                        f"stamp {chunk.stamp:.3f} s is {chunk.stamp - now:.3f} s ahead of the "
                        f"executor clock (max {self.config.max_future_stamp} s): clock mismatch?")
                if self._last_stamp is not None and chunk.stamp < self._last_stamp:
                    raise ChunkError(
                        f"stamp {chunk.stamp:.3f} s is older than the last accepted chunk's "
                        f"({self._last_stamp:.3f} s): out of order")
                result = self.buffer.insert(chunk.times(), actions, now)
            except ChunkError as exc:
                self.counters.rejected_chunks += 1
                self._log.warning(
                    "reject_chunk",
                    f"rejected chunk {chunk.chunk_id}: {exc} "
                    f"(rejected so far: {self.counters.rejected_chunks})")
                return ChunkVerdict(False, str(exc))
            self.counters.accepted_chunks += 1
            self.counters.dropped_past_actions += result.dropped_past
            self._last_stamp = chunk.stamp
            self._last_chunk_id = chunk.chunk_id
            return ChunkVerdict(True)

    def reject_chunk(self, chunk_id: int, reason: str) -> ChunkVerdict:
        """Count and log a chunk that failed before it became an ActionChunk (bad message)."""
        with self._lock:
            self.counters.rejected_chunks += 1
            self._log.warning(
                "reject_chunk", f"rejected chunk {chunk_id}: {reason} "
                f"(rejected so far: {self.counters.rejected_chunks})")
            return ChunkVerdict(False, reason)

    def update_joint_state(self, arm: str, names: Sequence[str], positions: Sequence[float],
                           now: float) -> bool:
        """Record one arm's measured joint state; a bad one is counted, logged and ignored."""
        try:
            self.arms.update(arm, names, positions, now)
        except JointStateError as exc:
            with self._lock:
                self.counters.rejected_joint_states += 1
                count = self.counters.rejected_joint_states
            self._log.warning("reject_joint_state",
                              f"rejected joint state: {exc} (rejected so far: {count})")
            return False
        return True

    # ------------------------------------------------------------------ services
    def pause(self) -> tuple[bool, str]:
        """Hold the last command; keep merging chunks."""
        with self._lock:
            if self._state is ExecutorState.STOPPED:
                return False, "stopped: resume first"
            if self._state is not ExecutorState.PAUSED:
                self._state = ExecutorState.PAUSED
                logger.info("paused: holding the last command")
            return True, "paused"

    def stop(self) -> tuple[bool, str]:
        """Hold the last command, clear the plan and ignore chunks until :meth:`resume`."""
        with self._lock:
            self.buffer.clear()
            self._last_stamp = None
            self._state = ExecutorState.STOPPED
            logger.info("stopped: holding the last command, plan cleared")
            return True, "stopped"

    def reset(self) -> tuple[bool, str]:
        """Stop and forget the last command: nothing is sent until :meth:`resume` and a new
        chunk, which ramps from the measured pose. For a robot (or simulator) moved to a new
        pose by someone else, e.g. between evaluation episodes: holding the old command would
        drive it back."""
        with self._lock:
            self.stop()
            self._last_command = None
            self._last_target_time = None
            logger.info("reset: plan cleared, nothing is sent until resume and a new chunk")
            return True, "reset"

    def resume(self) -> tuple[bool, str]:
        """Leave PAUSED / STOPPED; motion restarts through the rate-limited ramp."""
        with self._lock:
            if self._state not in (ExecutorState.PAUSED, ExecutorState.STOPPED):
                return True, f"not paused or stopped ({self._state.name.lower()})"
            self._state = (ExecutorState.IDLE if self._last_command is None
                           else ExecutorState.HOLDING)
            logger.info("resumed")
            return True, "resumed"

    # ------------------------------------------------------------------ ticks
    @property
    def state(self) -> ExecutorState:
        with self._lock:
            return self._state

    @property
    def last_command(self) -> np.ndarray | None:
        """(D,) the last command sent, or None before the first."""
        with self._lock:
            return None if self._last_command is None else self._last_command.copy()

    def tick(self, now: float) -> np.ndarray | None:
        """(D,) command for control time ``now``, or None (nothing may be sent yet)."""
        with self._lock:
            self.counters.ticks += 1
            state = self._state
            if state in (ExecutorState.PAUSED, ExecutorState.STOPPED):
                if state is ExecutorState.PAUSED:
                    # The plan stays time-indexed while paused: prune what has passed.
                    self.buffer.sample(now)
                return self._hold()
            target = self.buffer.sample(now)
            if target is None:
                return self._starve(now)
            self._last_target_time = now
            if self._last_command is None:
                measured = self.arms.measured(now, self.config.joint_state_timeout)
                if measured is None:
                    missing = self.arms.missing_arms(now, self.config.joint_state_timeout)
                    self._log.warning(
                        "no_joint_state",
                        f"not starting: no valid joint state within "
                        f"{self.config.joint_state_timeout} s from {missing}")
                    return None
                self._last_command = measured
                self._state = ExecutorState.RAMPING
                logger.info("start: ramping from the measured pose to the first target")
            elif state is ExecutorState.HOLDING or state is ExecutorState.IDLE:
                self._state = ExecutorState.RAMPING
            safe = self.safety.apply(target, self._last_command)
            if safe.clamped:
                self.counters.clamped_commands += 1
                self._log.warning(
                    "clamp", f"position limits clamped {list(safe.clamped)} "
                    f"(clamped commands so far: {self.counters.clamped_commands})")
            if safe.rate_limited:
                self.counters.rate_limited_commands += 1
                if self._state is not ExecutorState.RAMPING:
                    self._log.warning(
                        "rate_limit", f"rate limit bounded {list(safe.rate_limited)} "
                        f"(rate-limited commands so far: "
                        f"{self.counters.rate_limited_commands})")
            elif self._state is ExecutorState.RAMPING:
                self._state = ExecutorState.RUNNING
                logger.info("ramp done: running")
            self._last_command = safe.command
            self.counters.commands += 1
            return safe.command.copy()

    def _hold(self) -> np.ndarray | None:
        if self._last_command is None:
            return None
        self.counters.commands += 1
        return self._last_command.copy()

    def _starve(self, now: float) -> np.ndarray | None:
        if self._last_command is None:
            return None
        if self._state in (ExecutorState.RUNNING, ExecutorState.RAMPING):
            since = now - (self._last_target_time if self._last_target_time is not None
                           else now)
            if since >= self.config.stale_timeout - 1e-9:
                self._state = ExecutorState.HOLDING
                logger.warning(
                    "no valid target for %.3f s (stale timeout %.3f s): holding the last "
                    "command", since, self.config.stale_timeout)
            else:
                self.counters.starved_ticks += 1
                self._log.warning(
                    "starved", f"buffer ran dry: repeating the last command "
                    f"(starved ticks so far: {self.counters.starved_ticks})")
        return self._hold()

    # ------------------------------------------------------------------ status
    def snapshot(self, now: float) -> ExecutorSnapshot:
        """Status for the policy node's demand and for diagnostics."""
        with self._lock:
            horizon = self.buffer.remaining_horizon(now)
            if self._state is ExecutorState.STOPPED:
                horizon = 0.0
            return ExecutorSnapshot(
                state=self._state, remaining_horizon=horizon,
                remaining_steps=int(math.floor(horizon * self.config.control_rate_hz + 1e-9)),
                last_chunk_id=self._last_chunk_id,
                counters=ExecutorCounters(**vars(self.counters)))
