"""The executor's decisions: which command to send at each control tick, and when to hold.

:class:`ExecutorCore` combines the action buffer, the safety filter and the measured joint
states into a small state machine (the states of ``vla_msgs/ExecutorStatus``):

* IDLE: nothing commanded yet. The first target waits for a fresh measured joint state (judged
  by its header stamp) of every arm, inside the position limits up to ``start_margin``;
  nothing is sent before it. The ramp starts from that pose clamped into the limits.
* RAMPING: moving from the measured pose (start-up) or from a held pose (after a hold, pause
  or stop) toward the plan; ends at the first tick the rate limit does not bound.
* RUNNING: playing the plan. A tick without a target (buffer dry) repeats the last command and
  counts as starved; after ``stale_timeout`` seconds without a target the state is HOLDING.
* HOLDING: the last command is repeated (no motion) until a chunk brings a target again.
* PAUSED: holding by request; chunks are still merged into the (time-indexed) plan.
* STOPPED: holding by request; the plan is cleared and chunks are rejected until resume.
  After a reset (a stop that also forgets the last command) nothing is sent until resume and
  a new chunk, which ramps from the measured pose again.

Every command comes out of one :class:`~vla_policy_node.control.safety.CommandGuard`, so none
can leave the position limits or move more than the per-tick rate limit, whatever the input.
Chunks are bounded (K, step period, horizon) and ordered (ids, stamps). docs/safety.md lists
every rule with its parameter and counter.

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
from vla_policy_node.control.safety import CommandGuard, SafetyFilter, SafetyLimits
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
        joint_state_timeout: joint states whose header stamp is older than this (s) are not
            used for the ramp (a stamp from 1970, i.e. unset, is always too old).
        max_future_stamp: chunks and joint states stamped more than this (s) ahead of the
            executor's clock are rejected (a clock mismatch, e.g. sim time on one side only).
        start_margin: the executor refuses to start while a measured joint is outside its
            position limits by more than this (rad; grippers: normalized units); within it,
            the ramp starts from the measured pose clamped into the limits.
        max_chunk_length: chunks with more actions (K) are rejected.
        min_step_period / max_step_period: chunks whose step period lies outside are rejected.
        max_chunk_horizon: chunks spanning more than this, ``(K - 1) * step_period`` seconds,
            are rejected (one chunk cannot plan, or silence the policy's demand, for longer).
        log_interval: minimum seconds between two log lines of the same kind.
        realtime_priority: SCHED_FIFO priority of the control thread (0 = normal scheduling).
    """

    control_rate_hz: float = 50.0
    merge: MergeConfig = field(default_factory=MergeConfig)
    stale_timeout: float = 0.2
    joint_state_timeout: float = 1.0
    max_future_stamp: float = 0.5
    start_margin: float = 0.05
    max_chunk_length: int = 100
    min_step_period: float = 0.002
    max_step_period: float = 0.2
    max_chunk_horizon: float = 2.0
    log_interval: float = 1.0
    realtime_priority: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.control_rate_hz) and 0 < self.control_rate_hz <= 5000):
            raise ValueError(f"control_rate_hz must be in (0, 5000], got {self.control_rate_hz}")
        for name in ("stale_timeout", "joint_state_timeout", "max_future_stamp",
                     "min_step_period", "max_step_period", "max_chunk_horizon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if self.min_step_period > self.max_step_period:
            raise ValueError(f"min_step_period {self.min_step_period} s > max_step_period "
                             f"{self.max_step_period} s")
        if not (math.isfinite(self.start_margin) and self.start_margin >= 0):
            raise ValueError(f"start_margin must be >= 0, got {self.start_margin}")
        if int(self.max_chunk_length) != self.max_chunk_length or self.max_chunk_length < 1:
            raise ValueError(
                f"max_chunk_length must be a positive integer, got {self.max_chunk_length}")
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
            start_margin=get("start_margin", defaults.start_margin),
            max_chunk_length=int(params.get("max_chunk_length", defaults.max_chunk_length)),
            min_step_period=get("min_step_period", defaults.min_step_period),
            max_step_period=get("max_step_period", defaults.max_step_period),
            max_chunk_horizon=get("max_chunk_horizon", defaults.max_chunk_horizon),
            log_interval=get("log_interval", defaults.log_interval),
            realtime_priority=int(params.get("realtime_priority", defaults.realtime_priority)))


@dataclass
class ExecutorCounters:
    """Counters since start (see ``vla_msgs/ExecutorStatus``).

    ``clamped_commands`` and ``rate_limited_commands`` count what a healthy run does not do
    (diagnostics warn when they grow); what every start does is counted apart:
    ``ramp_rate_limited_commands`` (ticks of a ramp, where the rate limit is the ramp) and
    ``clamped_start_poses`` (a measured start pose clamped into the limits within
    ``start_margin``).
    """

    ticks: int = 0
    commands: int = 0
    starved_ticks: int = 0
    clamped_commands: int = 0
    rate_limited_commands: int = 0
    ramp_rate_limited_commands: int = 0
    clamped_start_poses: int = 0
    accepted_chunks: int = 0
    rejected_chunks: int = 0
    rejected_chunks_bounds: int = 0
    rejected_chunks_order: int = 0
    rejected_joint_states: int = 0
    refused_start_ticks: int = 0
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
        idle_reason: why nothing is commanded ("" once commands flow).
        last_rejection: why the last chunk or joint state was rejected ("" before any).
    """

    state: ExecutorState
    remaining_horizon: float
    remaining_steps: int
    last_chunk_id: int
    counters: ExecutorCounters
    idle_reason: str = ""
    last_rejection: str = ""


class _Rejected(ChunkError):
    """A chunk rejection with the counter it goes to (besides ``rejected_chunks``)."""

    def __init__(self, message: str, counter: str | None = None) -> None:
        super().__init__(message)
        self.counter = counter


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
        self.guard = CommandGuard(self.safety)
        self.buffer = ActionBuffer(robot.dim, self.config.merge)
        self.arms = ArmMapper(robot)
        self.counters = ExecutorCounters()
        self._log = ThrottledLogger(logger, self.config.log_interval)
        self._lock = threading.RLock()
        self._state = ExecutorState.IDLE
        self._last_target_time: float | None = None
        self._last_tick: float | None = None
        self._last_stamp: float | None = None
        self._last_chunk_id = 0
        self._sequence = False  # a chunk sequence is open: ids must increase
        self._idle_reason = "waiting for a first chunk"
        self._last_rejection = ""

    # ------------------------------------------------------------------ inputs
    def submit_chunk(self, chunk: ActionChunk, now: float) -> ChunkVerdict:
        """Validate ``chunk`` and merge it into the plan; never raises for a bad chunk.

        Rejected (whole, counted, logged): the executor is stopped; K, step period or horizon
        beyond the configured bounds; wrong joint names or size, non-finite values; stamp too
        far in the future; out of sequence (see :meth:`_check_order`); every action already
        past.
        """
        with self._lock:
            try:
                if self._state is ExecutorState.STOPPED:
                    raise _Rejected("executor is stopped (call resume)")
                self._check_bounds(chunk)
                actions = self.safety.validate_chunk(chunk)
                if chunk.stamp > now + self.config.max_future_stamp:
                    raise _Rejected(
                        f"stamp {chunk.stamp:.3f} s is {chunk.stamp - now:.3f} s ahead of the "
                        f"executor clock (max {self.config.max_future_stamp} s): clock mismatch?")
                new_sequence = self._check_order(chunk, now)
                result = self.buffer.insert(chunk.times(), actions, now)
            except ChunkError as exc:
                self.counters.rejected_chunks += 1
                counter = getattr(exc, "counter", None)
                if counter is not None:
                    setattr(self.counters, counter, getattr(self.counters, counter) + 1)
                self._last_rejection = f"chunk {chunk.chunk_id}: {exc}"
                self._log.warning(
                    "reject_chunk",
                    f"rejected chunk {chunk.chunk_id}: {exc} "
                    f"(rejected so far: {self.counters.rejected_chunks})")
                return ChunkVerdict(False, str(exc))
            if new_sequence and self.counters.accepted_chunks and (
                    chunk.chunk_id <= self._last_chunk_id):
                logger.info("chunk %d starts a new chunk sequence (the last one ended with "
                            "chunk %d): a restarted policy?", chunk.chunk_id,
                            self._last_chunk_id)
            self.counters.accepted_chunks += 1
            self.counters.dropped_past_actions += result.dropped_past
            self._last_stamp = chunk.stamp
            self._last_chunk_id = chunk.chunk_id
            self._sequence = True
            return ChunkVerdict(True)

    def _check_bounds(self, chunk: ActionChunk) -> None:
        """Reject a chunk whose size or timing exceeds the configured bounds (lock held)."""
        c = self.config
        k, period = chunk.chunk_length, chunk.step_period
        if k > c.max_chunk_length:
            raise _Rejected(f"{k} actions, more than max_chunk_length {c.max_chunk_length}",
                            "rejected_chunks_bounds")
        if not c.min_step_period <= period <= c.max_step_period:
            raise _Rejected(f"step period {period:g} s outside [min_step_period "
                            f"{c.min_step_period:g}, max_step_period {c.max_step_period:g}] s",
                            "rejected_chunks_bounds")
        horizon = (k - 1) * period
        if horizon > c.max_chunk_horizon:
            raise _Rejected(f"spans {horizon:g} s ({k} actions x {period:g} s), more than "
                            f"max_chunk_horizon {c.max_chunk_horizon:g} s",
                            "rejected_chunks_bounds")

    def _check_order(self, chunk: ActionChunk, now: float) -> bool:
        """Reject a chunk out of sequence (lock held); True if it starts a new sequence.

        Stamps never go back (until stop/reset or a clock jump back). A sequence lasts while
        its plan does: until ``stale_timeout`` after its last planned action (when the
        executor holds), or until stop/reset. Within it, ids must increase strictly (a repeated
        or lower id is a duplicate, a replay or a second producer). After it, a lower id is
        accepted with a newer stamp: a restarted policy numbers its chunks from 1 again and
        takes over once the old plan has run out.
        """
        end = self.buffer.end_time()
        self._sequence = self._sequence and end is not None and (
            now <= end + self.config.stale_timeout)
        if self._last_stamp is not None and chunk.stamp < self._last_stamp:
            raise _Rejected(
                f"stamp {chunk.stamp:.3f} s is older than the last accepted chunk's "
                f"({self._last_stamp:.3f} s): out of order", "rejected_chunks_order")
        if chunk.chunk_id > self._last_chunk_id:
            return not self._sequence
        if self._sequence:
            raise _Rejected(
                f"id not after the last accepted chunk {self._last_chunk_id}: duplicate, replay "
                f"or a second producer (a restarted policy is accepted once the current plan "
                f"has run out)", "rejected_chunks_order")
        if self._last_stamp is not None and chunk.stamp <= self._last_stamp:
            raise _Rejected(
                f"id not after the last accepted chunk {self._last_chunk_id} and stamp not "
                f"newer than its: a replay", "rejected_chunks_order")
        return True

    def reject_chunk(self, chunk_id: int, reason: str) -> ChunkVerdict:
        """Count and log a chunk that failed before it became an ActionChunk (bad message)."""
        with self._lock:
            self.counters.rejected_chunks += 1
            self._last_rejection = f"chunk {chunk_id}: {reason}"
            self._log.warning(
                "reject_chunk", f"rejected chunk {chunk_id}: {reason} "
                f"(rejected so far: {self.counters.rejected_chunks})")
            return ChunkVerdict(False, reason)

    def update_joint_state(self, arm: str, names: Sequence[str], positions: Sequence[float],
                           now: float, stamp: float | None = None) -> bool:
        """Record one arm's measured joint state; a bad one is counted, logged and ignored.

        ``stamp`` is the message's header stamp (None: ``now``, for callers without one). A
        stamp older than ``joint_state_timeout`` (an unset 1970 stamp included) or more than
        ``max_future_stamp`` ahead of ``now`` is rejected: freshness is judged by when the
        pose was measured, not when it arrived.
        """
        stamp = now if stamp is None else float(stamp)
        try:
            if not math.isfinite(stamp):
                raise JointStateError(f"{arm}: non-finite stamp {stamp}")
            if stamp < now - self.config.joint_state_timeout:
                raise JointStateError(
                    f"{arm}: stamp {stamp:.3f} s is {now - stamp:.3f} s old (joint_state_timeout "
                    f"{self.config.joint_state_timeout} s)" + (
                        ": unset (1970) stamp?" if stamp < 1.0 else ""))
            if stamp > now + self.config.max_future_stamp:
                raise JointStateError(
                    f"{arm}: stamp {stamp:.3f} s is {stamp - now:.3f} s ahead of the executor "
                    f"clock (max_future_stamp {self.config.max_future_stamp} s): clock mismatch?")
            self.arms.update(arm, names, positions, stamp)
        except JointStateError as exc:
            with self._lock:
                self.counters.rejected_joint_states += 1
                count = self.counters.rejected_joint_states
                self._last_rejection = f"joint state: {exc}"
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
            self._sequence = False
            self._state = ExecutorState.STOPPED
            logger.info("stopped: holding the last command, plan cleared")
            return True, "stopped"

    def reset(self) -> tuple[bool, str]:
        """Stop and forget the last command: nothing is sent until :meth:`resume` and a new
        chunk, which ramps from the measured pose. For a robot (or simulator) moved to a new
        pose by someone else, e.g. between evaluation episodes: holding the old command would
        drive it back. The joint states recorded so far are forgotten for the same reason: a
        pose measured before the reset (up to ``joint_state_timeout`` old) must not seed the
        ramp; only one received after it does."""
        with self._lock:
            self.stop()
            self.guard = CommandGuard(self.safety)
            self.arms.clear()
            self._last_target_time = None
            logger.info("reset: plan cleared, nothing is sent until resume and a new chunk")
            return True, "reset"

    def resume(self) -> tuple[bool, str]:
        """Leave PAUSED / STOPPED; motion restarts through the rate-limited ramp."""
        with self._lock:
            if self._state not in (ExecutorState.PAUSED, ExecutorState.STOPPED):
                return True, f"not paused or stopped ({self._state.name.lower()})"
            self._state = (ExecutorState.IDLE if not self.guard.started
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
            return self.guard.last

    def tick(self, now: float) -> np.ndarray | None:
        """(D,) command for control time ``now``, or None (nothing may be sent yet).

        Every command comes from :attr:`guard`: inside the position limits, and within one
        rate-limit step of the previous command (or of the clamped start pose).
        """
        with self._lock:
            self.counters.ticks += 1
            self._check_clock(now)
            state = self._state
            if state in (ExecutorState.PAUSED, ExecutorState.STOPPED):
                if state is ExecutorState.PAUSED:
                    # The plan stays time-indexed while paused: prune what has passed.
                    self.buffer.sample(now)
                return self._hold(state.name.lower())
            target = self.buffer.sample(now)
            if target is None:
                return self._starve(now)
            self._last_target_time = now
            if not self.guard.started:
                if not self._start(now):
                    return None
            elif state is ExecutorState.HOLDING or state is ExecutorState.IDLE:
                self._state = ExecutorState.RAMPING
            safe = self.guard.step(target)
            if safe.clamped:
                self.counters.clamped_commands += 1
                self._log.warning(
                    "clamp", f"position limits clamped {list(safe.clamped)} "
                    f"(clamped commands so far: {self.counters.clamped_commands})")
            if safe.rate_limited:
                if self._state is ExecutorState.RAMPING:
                    # Expected: the rate limit is what makes the ramp.
                    self.counters.ramp_rate_limited_commands += 1
                else:
                    self.counters.rate_limited_commands += 1
                    self._log.warning(
                        "rate_limit", f"rate limit bounded {list(safe.rate_limited)} "
                        f"(rate-limited commands so far: "
                        f"{self.counters.rate_limited_commands})")
            elif self._state is ExecutorState.RAMPING:
                self._state = ExecutorState.RUNNING
                logger.info("ramp done: running")
            self.counters.commands += 1
            return safe.command

    def _check_clock(self, now: float) -> None:
        """After the clock jumped back (a simulation restarted), forget the plan (lock held).

        Its times, and the last chunk's stamp, belong to the old time line: played on the new
        one, the plan's first target would be held until time caught up. Holding is safe and
        the next chunk (any id, any fresh stamp) ramps from the held command.
        """
        last, self._last_tick = self._last_tick, now
        if last is None or now >= last - self.config.stale_timeout:
            return
        logger.warning("clock jumped back by %.3f s: plan and chunk sequence cleared, holding",
                       last - now)
        self.buffer.clear()
        self._last_stamp = None
        self._sequence = False
        if self._last_target_time is not None:
            self._last_target_time = now - self.config.stale_timeout  # hold at once

    def _start(self, now: float) -> bool:
        """Seed the guard with the measured pose, if it is fresh and inside the limits up to
        ``start_margin`` (lock held); otherwise say why not and send nothing."""
        timeout = self.config.joint_state_timeout
        measured = self.arms.measured(now, timeout, self.config.max_future_stamp)
        if measured is None:
            missing = self.arms.missing_arms(now, timeout, self.config.max_future_stamp)
            self._idle_reason = (f"no joint state stamped within {timeout} s from {missing}")
            self._log.warning("no_joint_state", f"not starting: {self._idle_reason}")
            return False
        margin = self.config.start_margin
        outside = self.safety.outside(measured, margin)
        if outside:
            self.counters.refused_start_ticks += 1
            lo, hi = self.limits.position_min, self.limits.position_max
            index = {n: i for i, n in enumerate(self.limits.joint_names)}
            detail = ", ".join(f"{n}={v:.4g} (limits [{lo[index[n]]:.4g}, {hi[index[n]]:.4g}])"
                               for n, v in outside.items())
            self._idle_reason = (
                f"refusing to start: measured {detail} outside the position limits by more "
                f"than start_margin {margin:g}; move the arm inside its limits or check the "
                f"calibration and robot.position_min/max")
            self._log.log(logging.ERROR, "refuse_start",
                          f"{self._idle_reason} (refused ticks so far: "
                          f"{self.counters.refused_start_ticks})")
            return False
        clamped = self.guard.start(measured)
        if clamped:
            # Expected within the margin (e.g. a gripper resting just beyond its calibration).
            self.counters.clamped_start_poses += 1
            start = self.guard.last
            index = {n: i for i, n in enumerate(self.limits.joint_names)}
            logger.info("start pose clamped into the position limits (within start_margin %g): "
                        "%s", margin, ", ".join(f"{n} {measured[index[n]]:.4g} -> "
                                                f"{start[index[n]]:.4g}" for n in clamped))
        self._idle_reason = ""
        self._state = ExecutorState.RAMPING
        logger.info("start: ramping from the measured pose to the first target")
        return True

    def _hold(self, reason: str = "") -> np.ndarray | None:
        command = self.guard.hold()
        if command is None:
            if reason:
                self._idle_reason = reason
            return None
        self.counters.commands += 1
        return command

    def _starve(self, now: float) -> np.ndarray | None:
        if not self.guard.started:
            self._idle_reason = "waiting for a chunk"
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
                counters=ExecutorCounters(**vars(self.counters)),
                idle_reason=self._idle_reason if not self.guard.started else "",
                last_rejection=self._last_rejection)
