"""Property test of the executor's safety invariants over generated hostile input (hypothesis).

Every generated case builds an :class:`ExecutorCore` on a fake clock and drives it with a
random sequence of measured joint states (in range, out of range, NaN, inf, stamped from 1970,
from the future), chunks (K, step period, values, stamps, ids, NaN) and control ticks at
irregular times, plus pause / stop / resume. Whatever happens, every command it returns must

* lie inside ``robot.position_min/max`` (exactly: no tolerance);
* differ from the previous command by at most the per-tick rate limit;
* for the first command: lie within one rate-limit step of the clamped measured pose, and only
  if that pose was inside the limits by the start margin.

10,000 cases, derandomized (the same cases on every run, in CI too).
"""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
import pytest

from vla_policy_node.chunk import ActionChunk, ChunkError
from vla_policy_node.config import default_config_path, RobotConfig
from vla_policy_node.control.executor import ExecutorConfig, ExecutorCore

RATE = 50.0
DT = 1.0 / RATE
CASES = int(os.environ.get("VLA_PROPERTY_CASES", 10_000))

ROBOT = RobotConfig.from_file(default_config_path(), "chunk_executor")
GROUPS = ROBOT.arm_group_indices()
LO, HI = ROBOT.position_min, ROBOT.position_max
STEP = ROBOT.max_velocity / RATE
CONFIG = ExecutorConfig(control_rate_hz=RATE, log_interval=3600.0)  # the shipped bounds
SPECIAL = np.array([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324])
KINDS = ("joint_state", "chunk", "chunk", "ticks", "ticks", "ticks", "ticks", "pause", "resume",
         "stop", "reset", "jump")

# A case is a small program: hypothesis draws bytes (one cheap draw, so 10,000 cases stay
# fast); byte 0 picks the start time and whether the case begins running, then every 2 bytes
# are one event (its kind, and a byte that varies its values). Hypothesis shrinks a failure to
# fewer events and smaller bytes, i.e. a shorter, simpler scenario; the event values come from
# one generator seeded with the whole program, so a printed program reproduces its case.
programs = st.binary(min_size=3, max_size=25)


def decode(program: bytes) -> tuple[list[str], np.random.Generator]:
    """The event kinds of ``program`` and the generator of their values."""
    kinds = [KINDS[program[i] % len(KINDS)] for i in range(1, len(program) - 1, 2)]
    return kinds, np.random.default_rng(list(program))


def measured_pose(rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """(D,) measured vector and its age in seconds (None: an unset 1970 stamp).

    Half the time a plausible fresh pose (so that cases get going); otherwise near or beyond
    the limits, with absurd or non-finite joints, stale, from 1970 or from the future.
    """
    base = (LO + HI) / 2.0 + rng.uniform(-0.99, 0.99) * (HI - LO) / 2.0
    if rng.random() < 0.5:
        return base, 0.0
    kind = rng.integers(3)
    if kind == 1:  # every joint just inside / outside a limit (within or beyond the margin)
        margin = rng.uniform(-0.2, 0.2)
        base = np.where(rng.integers(2, size=ROBOT.dim) == 1, HI + margin, LO - margin)
    elif kind == 2:
        for i in rng.integers(ROBOT.dim, size=rng.integers(1, 5)):
            base[i] = (rng.uniform(-3.5, 3.5), rng.uniform(-60.0, 60.0),
                       SPECIAL[rng.integers(SPECIAL.size)])[rng.integers(3)]
    return base, (0.0, 0.0, -0.05, -5.0, 0.3, 10.0, None)[rng.integers(7)]


def chunk_parameters(rng: np.random.Generator, next_id: int,
                     plausible: bool = False) -> tuple:
    """(actions (K, D), step period, stamp offset from now, chunk id).

    Half plausible (policy-like K, period, stamp and the next id, targets possibly far beyond
    the limits); half hostile (huge K or period, NaN/inf, old/future stamps, stale ids).
    """
    scale = float(rng.choice([0.0, 0.05, 1.0, 5.0, 1e6, 1e308]))
    if plausible or rng.random() < 0.5:
        k = int(rng.integers(2, 31))
        period = float(rng.choice([0.02, 0.04, 0.05]))
        actions = (LO + HI) / 2.0 + rng.uniform(-1.5, 1.5) + scale * rng.uniform(
            -1.0, 1.0, (k, ROBOT.dim))
        return actions, period, float(rng.uniform(-0.3, 0.05)), next_id
    k = int(rng.integers(1, 31)) if rng.random() < 0.8 else int(rng.choice([100, 101, 400]))
    period = (float(rng.choice([0.04, 0.02, 0.2, 0.21, 0.001, 1e5])) if rng.random() < 0.5
              else float(10 ** rng.uniform(-4, 0.3)))
    actions = rng.uniform(-5.0, 5.0) + scale * rng.uniform(-1.0, 1.0, (k, ROBOT.dim))
    if rng.random() < 0.3:
        actions[rng.integers(k), rng.integers(ROBOT.dim)] = SPECIAL[rng.integers(7)]
    stamp = float(rng.choice([0.0, -0.1, -0.5, 0.2, 0.6, -3.0, -1e9]))
    chunk_id = int(rng.integers(0, 6)) if rng.random() < 0.9 else 2**64 - 1
    return actions, period, stamp, chunk_id


def feed(core: ExecutorCore, pose: np.ndarray, now: float, stamp: float,
         accepted: dict[str, np.ndarray]) -> None:
    """Publish ``pose`` as per-arm joint states; record in ``accepted`` what the core took."""
    for arm, group in GROUPS.items():
        names = list(group["driver_joint_names"]) + [ROBOT.gripper_joint_name]
        with np.errstate(all="ignore"):
            positions = list(pose[group["joint_indices"]]) + [
                float(ROBOT.unnormalize_gripper(pose[group["gripper_index"]]))]
        if core.update_joint_state(arm, names, positions, now, stamp=stamp):
            accepted[arm] = pose


def measured_vector(accepted: dict[str, np.ndarray]) -> np.ndarray | None:
    if set(accepted) != set(GROUPS):
        return None
    vector = np.empty(ROBOT.dim)
    for arm, group in GROUPS.items():
        index = list(group["joint_indices"]) + [group["gripper_index"]]
        vector[index] = accepted[arm][index]
    return vector


def check(command: np.ndarray, previous: np.ndarray | None, measured: np.ndarray | None,
          margin: float) -> None:
    assert command.shape == (ROBOT.dim,)
    assert np.all(np.isfinite(command)), command
    out = (command < LO) | (command > HI)
    names = np.array(ROBOT.joint_names)[out]
    assert not out.any(), f"out of limits: {dict(zip(names, command[out]))}"
    if previous is not None:
        step = np.abs(command - previous)
        assert np.all(step <= STEP * (1 + 1e-9)), f"per-tick step {step} > {STEP}"
    else:
        assert measured is not None, "a command before any accepted joint state"
        assert np.all((measured >= LO - margin) & (measured <= HI + margin)), \
            f"started from a pose outside the limits by more than {margin}: {measured}"
        start = np.clip(measured, LO, HI)
        assert np.all(np.abs(command - start) <= STEP * (1 + 1e-9) + 1e-12)


def run_case(program: bytes) -> int:
    """Drive a fresh core with ``program``, checking every command; returns how many it sent."""
    core = ExecutorCore(ROBOT, CONFIG)
    margin = core.config.start_margin
    now = (0.0, 0.5, 100.0, 1.7e9)[program[0] % 4]
    previous: np.ndarray | None = None
    accepted: dict[str, np.ndarray] = {}
    sent, next_id = 0, 1
    kinds, rng = decode(program)
    if program[0] & 4:
        # Half the cases begin running (a fresh pose and a policy-like chunk), so that the
        # hostile events that follow hit every state, not only IDLE.
        pose = (LO + HI) / 2.0 + rng.uniform(-0.99, 0.99) * (HI - LO) / 2.0
        feed(core, pose, now, now, accepted)
        actions, period, stamp, chunk_id = chunk_parameters(rng, next_id, plausible=True)
        next_id += 1
        core.submit_chunk(ActionChunk(stamp=now + stamp, actions=actions,
                                      joint_names=ROBOT.joint_names, step_period=period,
                                      chunk_id=chunk_id), now)
    for kind in kinds:
        if kind == "joint_state":
            pose, age = measured_pose(rng)
            feed(core, pose, now, 0.0 if age is None else now - age, accepted)
        elif kind == "chunk":
            actions, period, stamp, chunk_id = chunk_parameters(rng, next_id)
            next_id += 1
            try:
                chunk = ActionChunk(stamp=now + stamp, actions=actions,
                                    joint_names=ROBOT.joint_names, step_period=period,
                                    chunk_id=chunk_id)
            except ChunkError as exc:  # as the node does with a message it cannot convert
                core.reject_chunk(chunk_id, str(exc))
                continue
            core.submit_chunk(chunk, now)
        elif kind == "ticks":
            dt = (DT, DT, DT, 0.0, DT / 3, 0.013, 0.5)[rng.integers(7)]
            for _ in range(rng.integers(1, 11)):
                command = core.tick(now)
                if command is not None:
                    check(command, previous, measured_vector(accepted), margin)
                    previous = command
                    sent += 1
                now += dt
        elif kind == "jump":
            now += (-1.0, -0.02, 0.3, 3.0)[rng.integers(4)]
        else:
            getattr(core, kind)()
            if kind == "reset":
                previous = None  # reset forgets the last command: it restarts from measured
    # Hostile input is counted, never silent: every rejection left a reason.
    if core.counters.rejected_chunks or core.counters.rejected_joint_states:
        assert core.snapshot(now).last_rejection
    return sent


@settings(max_examples=CASES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
def test_no_command_leaves_the_limits_or_the_rate_limit(program):
    run_case(program)


def test_the_generated_cases_reach_motion():
    """Not vacuous: a good share of random programs start the executor and send commands."""
    rng = np.random.default_rng(0)
    sent = [run_case(rng.integers(0, 256, size=int(rng.integers(3, 26)), dtype=np.uint8)
                     .tobytes()) for _ in range(300)]
    assert np.mean(np.array(sent) > 0) > 0.2, f"only {np.mean(np.array(sent) > 0):.0%} move"


def test_the_property_test_can_fail():
    """The checker itself rejects an out-of-limit command and a jump (it is not vacuous)."""
    inside = (LO + HI) / 2.0
    with pytest.raises(AssertionError, match="out of limits"):
        check(HI + 0.1, None, inside, 0.0)
    with pytest.raises(AssertionError, match="per-tick step"):
        check(inside + 2 * STEP, inside, inside, 0.0)
