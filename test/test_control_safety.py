"""Safety filter: chunk validation, position clamp, per-tick rate limit, gripper range."""

from __future__ import annotations

import numpy as np
import pytest

from vla_policy_node.chunk import ActionChunk, ChunkError
from vla_policy_node.config import default_config_path, RobotConfig
from vla_policy_node.control.safety import CommandGuard, SafetyFilter, SafetyLimits


@pytest.fixture(scope="module")
def robot() -> RobotConfig:
    return RobotConfig.from_file(default_config_path(), "chunk_executor")


@pytest.fixture(scope="module")
def safety(robot) -> SafetyFilter:
    return SafetyFilter(SafetyLimits.from_robot(robot, 50.0))


def chunk_for(names, values) -> ActionChunk:
    return ActionChunk(stamp=1.0, actions=np.asarray(values, dtype=float), joint_names=names,
                       step_period=0.04, chunk_id=7)


def test_per_tick_step_is_max_velocity_over_control_rate(robot):
    limits = SafetyLimits.from_robot(robot, 50.0)
    np.testing.assert_allclose(limits.max_step, robot.max_velocity / 50.0)
    np.testing.assert_allclose(SafetyLimits.from_robot(robot, 500.0).max_step,
                               robot.max_velocity / 500.0)
    with pytest.raises(ValueError, match="control_rate_hz"):
        SafetyLimits.from_robot(robot, 0.0)


def test_chunk_with_robot_joint_names_passes(robot, safety):
    values = np.tile(np.linspace(0, 0.5, robot.dim), (3, 1))
    np.testing.assert_array_equal(
        safety.validate_chunk(chunk_for(robot.joint_names, values)), values)


def test_chunk_in_another_joint_order_is_reordered(robot, safety):
    names = tuple(reversed(robot.joint_names))
    values = np.tile(np.arange(robot.dim, dtype=float), (2, 1))  # value = index in `names`
    out = safety.validate_chunk(chunk_for(names, values))
    np.testing.assert_array_equal(out[0], np.arange(robot.dim)[::-1])


@pytest.mark.parametrize("mutate, match", [
    (lambda n: n[:-1], "missing \\['right_gripper'\\]"),
    (lambda n: n[:-1] + ("right_pinky",), "unknown \\['right_pinky'\\]"),
    (lambda n: n + ("extra",), "unknown \\['extra'\\]"),
])
def test_chunk_with_wrong_joint_names_is_rejected(robot, safety, mutate, match):
    names = mutate(tuple(robot.joint_names))
    with pytest.raises(ChunkError, match=match):
        safety.validate_chunk(chunk_for(names, np.zeros((2, len(names)))))


def test_clamp_to_position_limits_names_the_joints(robot, safety):
    target = np.zeros(robot.dim)
    i_elbow = robot.joint_names.index("left_elbow")
    i_grip = robot.joint_names.index("right_gripper")
    target[i_elbow] = 9.0
    target[i_grip] = -0.5  # beyond the gripper range: normalized 0 = closed
    clamped, names = safety.clamp(target)
    assert clamped[i_elbow] == robot.position_max[i_elbow]
    assert clamped[i_grip] == 0.0
    assert set(names) == {"left_elbow", "right_gripper"}
    with pytest.raises(ValueError, match="finite"):
        safety.clamp(np.full(robot.dim, np.nan))


def test_rate_limit_bounds_every_joint_per_tick(robot, safety):
    last = np.zeros(robot.dim)
    target = np.full(robot.dim, 0.9)
    out = safety.apply(target, last)
    np.testing.assert_allclose(out.command, np.minimum(0.9, robot.max_velocity / 50.0))
    assert set(out.rate_limited) == set(robot.joint_names)
    small = safety.apply(np.full(robot.dim, 1e-3), last)
    assert small.rate_limited == () and small.clamped == ()
    np.testing.assert_allclose(small.command, 1e-3)


def test_no_command_leaves_the_limits_even_from_a_last_command_outside(robot, safety):
    i = robot.joint_names.index("left_gripper")
    last = np.zeros(robot.dim)
    last[i] = 1.5  # e.g. a measured gripper beyond "open"
    out = safety.apply(np.zeros(robot.dim), last)
    assert out.command[i] == robot.position_max[i]
    assert np.all((out.command >= robot.position_min) & (out.command <= robot.position_max))


def test_command_guard_starts_clamped_and_bounds_every_step(robot, safety):
    guard = CommandGuard(safety)
    assert guard.hold() is None and not guard.started
    with pytest.raises(RuntimeError):
        guard.step(np.zeros(robot.dim))
    pose = np.zeros(robot.dim)
    i = robot.joint_names.index("left_gripper")
    pose[i] = 1.04
    assert guard.start(pose) == ("left_gripper",)
    assert guard.started and guard.last[i] == 1.0
    step = robot.max_velocity / 50.0
    previous = guard.last
    for target in (np.full(robot.dim, 1e9), np.full(robot.dim, -1e9),
                   np.full(robot.dim, np.nan), np.where(np.arange(robot.dim) % 2, np.inf, 0.0)):
        for _ in range(5):
            command = guard.step(target).command
            assert np.all((command >= robot.position_min) & (command <= robot.position_max))
            assert np.all(np.abs(command - previous) <= step + 1e-12)
            previous = command
    np.testing.assert_array_equal(guard.hold(), previous)
    # A non-finite target joint is held where it is and reported (counted as clamped).
    held = guard.step(np.where(np.arange(robot.dim) == 2, np.inf, previous))
    assert held.clamped == (robot.joint_names[2],)
    np.testing.assert_array_equal(held.command, previous)


def test_limits_validate_their_inputs():
    with pytest.raises(ValueError, match="position_min >= position_max"):
        SafetyLimits(("a",), [1.0], [0.0], [0.1])
    with pytest.raises(ValueError, match="max_step"):
        SafetyLimits(("a",), [0.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        SafetyLimits(("a",), [np.nan], [1.0], [0.1])
