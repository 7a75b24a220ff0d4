"""ExecutorCore with a fake clock and synthetic chunks: start-up ramp, hand-over, safety, hold."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vla_policy_node.chunk import ActionChunk
from vla_policy_node.config import default_config_path, load_node_params, RobotConfig
from vla_policy_node.control.buffer import MergeConfig
from vla_policy_node.control.executor import ExecutorConfig, ExecutorCore, ExecutorState

RATE = 50.0
DT = 1.0 / RATE
PERIOD = 0.04
K = 25


@pytest.fixture(scope="module")
def robot() -> RobotConfig:
    return RobotConfig.from_file(default_config_path(), "chunk_executor")


def make_core(robot, **kwargs) -> ExecutorCore:
    # Long test plans (up to 200 actions of 0.04 s); the bounds have their own tests.
    kwargs.setdefault("max_chunk_length", 200)
    kwargs.setdefault("max_chunk_horizon", 8.0)
    config = ExecutorConfig(control_rate_hz=RATE, **kwargs)
    return ExecutorCore(robot, config)


def feed_joint_states(core: ExecutorCore, robot: RobotConfig, vector: np.ndarray,
                      now: float) -> None:
    """Publish ``vector`` (D,) as per-arm driver joint states."""
    for arm, group in robot.arm_group_indices().items():
        names = list(group["driver_joint_names"]) + [robot.gripper_joint_name,
                                                     "left_finger", "right_finger"]
        positions = list(vector[group["joint_indices"]]) + [
            float(robot.unnormalize_gripper(vector[group["gripper_index"]])), 0.02, -0.02]
        assert core.update_joint_state(arm, names, positions, now)


def chunk(robot, stamp: float, values, chunk_id: int = 1, k: int = K) -> ActionChunk:
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = np.tile(values, (k, 1))
    return ActionChunk(stamp=stamp, actions=values, joint_names=robot.joint_names,
                       step_period=PERIOD, chunk_id=chunk_id)


def home(robot) -> np.ndarray:
    pose = np.zeros(robot.dim)
    for i, name in enumerate(robot.joint_names):
        if name.endswith("gripper"):
            pose[i] = 0.5
    return pose


def test_config_reads_the_chunk_executor_section():
    params = load_node_params(default_config_path(), "chunk_executor")
    config = ExecutorConfig.from_params(params)
    assert config.control_rate_hz == params["control_rate_hz"]
    assert config.merge.strategy.value == params["merge_strategy"]
    assert config.stale_timeout == params["stale_timeout"]
    with pytest.raises(ValueError, match="stale_timeout"):
        ExecutorConfig(stale_timeout=0.0)
    with pytest.raises(ValueError, match="'fade'"):
        ExecutorConfig.from_params({"merge_strategy": "fade"})


def test_nothing_is_sent_before_a_joint_state(robot):
    core = make_core(robot)
    assert core.submit_chunk(chunk(robot, 0.0, home(robot)), now=0.0).accepted
    assert core.tick(0.0) is None
    assert core.state is ExecutorState.IDLE


def test_startup_ramps_from_the_measured_pose_under_the_rate_limit(robot):
    core = make_core(robot)
    start = home(robot)
    feed_joint_states(core, robot, start, now=0.0)
    target = start.copy()
    target[robot.joint_names.index("left_shoulder")] = 0.3
    target[robot.joint_names.index("right_gripper")] = 1.0
    core.submit_chunk(chunk(robot, 0.0, target, k=100), now=0.0)
    commands = [core.tick(i * DT) for i in range(60)]
    first = commands[0]
    step = robot.max_velocity / RATE
    np.testing.assert_allclose(first, np.clip(target, start - step, start + step))
    # The ramp is rate limited by design: counted apart, not as a warning-worthy limit.
    assert core.counters.ramp_rate_limited_commands > 0
    assert core.counters.rate_limited_commands == 0
    deltas = np.abs(np.diff(np.array([start] + commands), axis=0))
    assert np.all(deltas <= step + 1e-12)
    np.testing.assert_allclose(commands[-1], target)
    assert core.state is ExecutorState.RUNNING


def test_stale_joint_state_or_nan_joint_state_is_not_used_for_the_ramp(robot):
    core = make_core(robot, joint_state_timeout=0.5)
    feed_joint_states(core, robot, home(robot), now=0.0)
    core.submit_chunk(chunk(robot, 2.0, home(robot)), now=2.0)
    assert core.tick(2.0) is None  # the state is 2 s old
    names = list(robot.arm_joint_names) + [robot.gripper_joint_name]
    bad = [0.0] * len(names)
    bad[1] = float("nan")
    assert not core.update_joint_state("follower_left", names, bad, 2.0)
    assert not core.update_joint_state("follower_left", names[:-1], bad[:-1], 2.0)
    assert not core.update_joint_state("follower_middle", names, [0.0] * len(names), 2.0)
    assert core.counters.rejected_joint_states == 3
    assert core.tick(2.02) is None
    assert core.state is ExecutorState.IDLE


def test_bad_chunks_are_rejected_whole_and_move_nothing(robot):
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=0.0)
    core.submit_chunk(chunk(robot, 0.0, home(robot), k=100), now=0.0)
    for i in range(5):
        held = core.tick(i * DT)
    wrong_names = ActionChunk(stamp=0.1, actions=np.ones((K, robot.dim)),
                              joint_names=tuple(f"j{i}" for i in range(robot.dim)),
                              step_period=PERIOD, chunk_id=2)
    short = ActionChunk(stamp=0.1, actions=np.ones((K, robot.dim - 1)),
                        joint_names=robot.joint_names[:-1], step_period=PERIOD, chunk_id=3)
    future = chunk(robot, 5.0, np.ones(robot.dim), chunk_id=4)
    expired = chunk(robot, -3.0, np.ones(robot.dim), chunk_id=5)
    for bad in (wrong_names, short, future, expired):
        verdict = core.submit_chunk(bad, now=0.1)
        assert not verdict.accepted and verdict.reason
    assert not core.reject_chunk(6, "chunk_length 25 x action_dim 14 != 300 actions").accepted
    assert core.counters.rejected_chunks == 5
    assert core.counters.accepted_chunks == 1
    for i in range(5, 30):
        np.testing.assert_allclose(core.tick(i * DT), held)


def test_out_of_order_chunk_is_rejected(robot):
    core = make_core(robot)
    assert core.submit_chunk(chunk(robot, 1.0, home(robot), chunk_id=2), now=1.1).accepted
    verdict = core.submit_chunk(chunk(robot, 0.9, home(robot), chunk_id=3), now=1.1)
    assert not verdict.accepted and "out of order" in verdict.reason
    assert core.counters.rejected_chunks_order == 1


def test_position_limits_clamp_and_are_counted(robot, caplog):
    core = make_core(robot)
    start = home(robot)
    feed_joint_states(core, robot, start, now=0.0)
    i = robot.joint_names.index("left_elbow")
    target = start.copy()
    target[i] = 50.0
    core.submit_chunk(chunk(robot, 0.0, target, k=200), now=0.0)
    with caplog.at_level(logging.WARNING, logger="vla_policy_node.control.executor"):
        commands = np.array([core.tick(n * DT) for n in range(150)])
    assert commands[:, i].max() == pytest.approx(robot.position_max[i])
    assert core.counters.clamped_commands == 150
    assert any("left_elbow" in r.getMessage() and "clamped" in r.getMessage()
               for r in caplog.records)
    # Rate-limited logging: one line per interval, not one per tick.
    assert sum("clamped" in r.getMessage() for r in caplog.records) < 5


def simulate(robot, latency: float, demand: float, seconds: float, merge: str = "crossfade",
             jitter_seed: int = 0):
    """Run the executor at 50 Hz with a policy that answers ``latency`` s after the demand.

    The policy predicts a smooth trajectory (sinusoids) from the observation time; each chunk
    is slightly wrong (an offset) so hand-overs must blend. Returns core, commands, states.
    """
    rng = np.random.default_rng(jitter_seed)
    core = make_core(robot, merge=MergeConfig(strategy=merge))
    base = home(robot)
    feed_joint_states(core, robot, base, now=0.0)
    phase = rng.uniform(0, np.pi, robot.dim)

    def trajectory(t):
        return base + 0.2 * np.sin(2.0 * t[:, None] + phase)

    pending = None  # (ready_time, stamp)
    commands, states = [], []
    chunk_id = 0
    for n in range(int(seconds * RATE)):
        now = n * DT
        if pending is None and core.snapshot(now).remaining_horizon < demand:
            pending = (now + latency, now)
        if pending is not None and now >= pending[0]:
            stamp = pending[1]
            chunk_id += 1
            times = stamp + np.arange(K) * PERIOD
            actions = trajectory(times) + rng.normal(0, 0.01, robot.dim)
            core.submit_chunk(ActionChunk(stamp=stamp, actions=actions,
                                          joint_names=robot.joint_names,
                                          step_period=PERIOD, chunk_id=chunk_id), now=now)
            pending = None
        commands.append(core.tick(now))
        states.append(core.state)
    return core, commands, states


@pytest.mark.parametrize("merge", ["replace", "crossfade", "temporal_ensemble"])
def test_gap_free_hand_over_when_latency_is_below_the_horizon(robot, merge):
    core, commands, states = simulate(robot, latency=0.32, demand=0.6, seconds=8.0, merge=merge)
    first = next(i for i, c in enumerate(commands) if c is not None)
    running = [i for i, s in enumerate(states) if s is ExecutorState.RUNNING]
    assert running and running[0] > first
    assert core.counters.starved_ticks == 0
    assert core.counters.accepted_chunks > 10
    assert all(states[i] in (ExecutorState.RUNNING, ExecutorState.RAMPING)
               for i in range(first, len(states)))
    moves = np.abs(np.diff(np.array(commands[first:]), axis=0))
    assert np.all(moves <= robot.max_velocity / RATE + 1e-12)


def test_demand_later_than_the_latency_starves_then_holds(robot):
    # The policy is asked 0.6 s before the buffer runs dry but needs 0.8 s: gaps of 0.2 s+.
    core, commands, states = simulate(robot, latency=0.8, demand=0.6, seconds=8.0)
    assert core.counters.starved_ticks > 0
    assert ExecutorState.HOLDING in states
    # While holding, the command does not change.
    held = [i for i, s in enumerate(states) if s is ExecutorState.HOLDING]
    block = [commands[i] for i in held[:5]]
    for c in block:
        np.testing.assert_array_equal(c, block[0])


def test_stale_timeout_holds_the_last_command(robot):
    core = make_core(robot, stale_timeout=0.2)
    feed_joint_states(core, robot, home(robot), now=0.0)
    target = home(robot) + 0.01
    core.submit_chunk(chunk(robot, 0.0, target, k=10), now=0.0)  # ends at 0.36 s
    commands = {}
    for n in range(60):
        commands[n] = core.tick(n * DT)
    last_planned = commands[18]  # t = 0.36
    for n in range(19, 60):
        np.testing.assert_array_equal(commands[n], last_planned)
    # Starved from 0.38 s until the stale timeout (0.2 s after 0.36 s), then holding.
    assert core.counters.starved_ticks == 9
    assert core.state is ExecutorState.HOLDING
    # A new chunk brings it back, through a ramp.
    core.submit_chunk(chunk(robot, 1.2, home(robot) + 0.5, k=50, chunk_id=2), now=1.2)
    core.tick(1.2)
    assert core.state is ExecutorState.RAMPING


def test_pause_holds_and_keeps_merging_stop_clears(robot):
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=0.0)
    ramp = home(robot) + np.linspace(0, 0.4, 100)[:, None] * np.eye(robot.dim)[0]
    core.submit_chunk(chunk(robot, 0.0, ramp, k=100), now=0.0)
    for n in range(10):
        core.tick(n * DT)
    assert core.pause() == (True, "paused")
    held = core.tick(10 * DT)
    for n in range(11, 20):
        np.testing.assert_array_equal(core.tick(n * DT), held)
    assert core.state is ExecutorState.PAUSED
    assert core.submit_chunk(chunk(robot, 0.4, ramp, k=100, chunk_id=2), now=0.4).accepted
    assert core.resume()[0]
    moved = core.tick(20 * DT)
    assert not np.array_equal(moved, held)
    assert np.all(np.abs(moved - held) <= robot.max_velocity / RATE + 1e-12)

    assert core.stop()[0]
    assert core.snapshot(0.5).remaining_horizon == 0.0
    stopped = core.tick(21 * DT)
    np.testing.assert_array_equal(stopped, moved)
    verdict = core.submit_chunk(chunk(robot, 0.44, ramp, k=100, chunk_id=3), now=0.44)
    assert not verdict.accepted and "stopped" in verdict.reason
    assert core.pause()[0] is False
    for n in range(22, 40):
        np.testing.assert_array_equal(core.tick(n * DT), stopped)
    assert core.resume()[0]
    assert core.state is ExecutorState.HOLDING
    assert core.submit_chunk(chunk(robot, 0.8, ramp, k=100, chunk_id=4), now=0.8).accepted


def test_snapshot_reports_demand(robot):
    core = make_core(robot)
    core.submit_chunk(chunk(robot, 1.0, home(robot), chunk_id=9), now=1.1)
    snap = core.snapshot(1.1)
    assert snap.remaining_horizon == pytest.approx(1.0 + (K - 1) * PERIOD - 1.1)
    assert snap.remaining_steps == int((1.0 + (K - 1) * PERIOD - 1.1) * RATE + 1e-9)
    assert snap.last_chunk_id == 9
    assert snap.counters.accepted_chunks == 1
    assert snap.state is ExecutorState.IDLE


def test_reset_sends_nothing_then_ramps_from_the_new_measured_pose(robot):
    """Between evaluation episodes the simulator puts the arms back home: a reset executor must
    not drive them back to its old command, and restarts from where the arms now are."""
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=0.0)
    far = home(robot) + 0.3 * np.eye(robot.dim)[0]
    core.submit_chunk(chunk(robot, 0.0, np.repeat(far[None], 100, 0), k=100), now=0.0)
    for n in range(40):
        last = core.tick(n * DT)
    assert last[0] > home(robot)[0] + 0.1
    assert core.reset() == (True, "reset")
    for n in range(40, 60):
        assert core.tick(n * DT) is None  # a stop would repeat `last`
    assert not core.submit_chunk(chunk(robot, 1.2, home(robot), chunk_id=2), now=1.2).accepted
    moved = home(robot) + 0.05 * np.eye(robot.dim)[1]
    feed_joint_states(core, robot, moved, now=1.2)
    assert core.resume()[0] and core.state is ExecutorState.IDLE
    assert core.submit_chunk(chunk(robot, 1.2, np.repeat(moved[None], K, 0), chunk_id=3),
                             now=1.2).accepted
    first = core.tick(1.2)
    np.testing.assert_allclose(first, moved, atol=1e-9)


def test_reset_forgets_joint_states_measured_before_it(robot):
    """A joint state from before a reset (up to joint_state_timeout old) must not seed the
    ramp: the simulator may have moved the arms since. Only one received after it may."""
    core = make_core(robot, joint_state_timeout=1.0)
    feed_joint_states(core, robot, home(robot), now=0.0)
    assert core.submit_chunk(chunk(robot, 0.0, home(robot)), now=0.0).accepted
    core.tick(0.0)
    core.reset()
    core.resume()
    assert core.submit_chunk(chunk(robot, 0.1, home(robot), chunk_id=2), now=0.1).accepted
    assert core.tick(0.1) is None  # the pre-reset pose (0.1 s old) is not used
    assert "no joint state" in core.snapshot(0.1).idle_reason
    moved = home(robot) + 0.05 * np.eye(robot.dim)[1]
    feed_joint_states(core, robot, moved, now=0.12)
    first = core.tick(0.12)  # ramps from the new pose toward home
    assert np.all(np.abs(first - moved) <= robot.max_velocity / RATE + 1e-12)
    assert first[1] > 0.0


# ---------------------------------------------------------------------- issue 11: hostile input
def driver_pose(robot, **joints) -> np.ndarray:
    """home() with some joints set; grippers given in driver radians."""
    pose = home(robot)
    for name, value in joints.items():
        i = robot.joint_names.index(name)
        pose[i] = robot.normalize_gripper(value) if name.endswith("gripper") else value
    return pose


def test_measured_pose_far_outside_the_limits_refuses_to_start(robot, caplog):
    """Waist at 50 rad, gripper at 10 rad: before, 332 of 333 commands left the limits."""
    core = make_core(robot)
    bad = driver_pose(robot, left_waist=50.0, left_gripper=10.0)
    core.submit_chunk(chunk(robot, 0.0, home(robot), k=200), now=0.0)
    with caplog.at_level(logging.WARNING, logger="vla_policy_node.control.executor"):
        commands = []
        for n in range(333):
            if n % 25 == 0:
                feed_joint_states(core, robot, bad, now=n * DT)
            commands.append(core.tick(n * DT))
    assert commands == [None] * 333
    assert core.counters.refused_start_ticks == 333
    assert core.state is ExecutorState.IDLE
    reason = core.snapshot(333 * DT).idle_reason
    assert "refusing to start" in reason and "left_waist=50" in reason
    assert "left_gripper" in reason and "start_margin 0.05" in reason
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "left_waist=50" in errors[0].getMessage()
    assert len(errors) < 10  # throttled: one line per log_interval, not one per tick

    # The arm is brought back inside its limits: the ramp starts from there.
    inside = driver_pose(robot, left_waist=3.1)
    feed_joint_states(core, robot, inside, now=333 * DT)
    first = core.tick(333 * DT)
    step = robot.max_velocity / RATE
    assert np.all(np.abs(first - inside) <= step + 1e-12)
    assert core.snapshot(333 * DT).idle_reason == ""


def test_measured_pose_within_the_margin_ramps_from_the_clamped_pose(robot):
    core = make_core(robot, start_margin=0.05)
    i_elbow = robot.joint_names.index("left_elbow")
    i_grip = robot.joint_names.index("right_gripper")
    pose = home(robot)
    pose[i_elbow] = robot.position_max[i_elbow] + 0.04
    pose[i_grip] = -0.03  # normalized: just beyond "closed"
    feed_joint_states(core, robot, pose, now=0.0)
    core.submit_chunk(chunk(robot, 0.0, home(robot), k=50), now=0.0)
    commands = np.array([core.tick(n * DT) for n in range(50)])
    assert np.all((commands >= robot.position_min) & (commands <= robot.position_max))
    start = np.clip(pose, robot.position_min, robot.position_max)
    step = robot.max_velocity / RATE
    assert np.all(np.abs(commands[0] - start) <= step + 1e-12)
    assert np.all(np.abs(np.diff(commands, axis=0)) <= step + 1e-12)
    assert core.counters.clamped_start_poses == 1


def test_a_normal_start_leaves_the_warning_counters_alone_a_jump_while_running_does_not(
        robot):
    """/diagnostics warns when clamped_commands or rate_limited_commands grow: a start from a
    pose within start_margin (clamped, expected) and its ramp (rate limited by design) must
    not grow them, or every start, resume and reset reads WARN. A jump while running must."""
    core = make_core(robot, start_margin=0.05)
    i_grip = robot.joint_names.index("right_gripper")
    pose = home(robot)
    pose[i_grip] = -0.03  # normalized: the simulator's gripper rests just beyond "closed"
    feed_joint_states(core, robot, pose, now=0.0)
    target = home(robot) + 0.3 * np.eye(robot.dim)[1]
    core.submit_chunk(chunk(robot, 0.0, target, k=100), now=0.0)
    for n in range(60):
        core.tick(n * DT)
    assert core.state is ExecutorState.RUNNING
    c = core.counters
    assert (c.clamped_commands, c.rate_limited_commands) == (0, 0)
    assert c.clamped_start_poses == 1 and c.ramp_rate_limited_commands > 0
    # While paused the plan moves on; resume ramps from the held command to it: again no
    # warning counter.
    core.pause()
    jump = target + 0.4 * np.eye(robot.dim)[2]
    core.submit_chunk(chunk(robot, 60 * DT, jump, chunk_id=2, k=100), now=60 * DT)
    for n in range(60, 80):
        core.tick(n * DT)
    core.resume()
    for n in range(80, 120):
        core.tick(n * DT)
    assert core.state is ExecutorState.RUNNING
    assert (c.clamped_commands, c.rate_limited_commands) == (0, 0)
    # While running, a target beyond the limits and a jump are real: counted to warn.
    beyond = jump.copy()
    beyond[2] = 50.0
    core.submit_chunk(chunk(robot, 120 * DT, beyond, chunk_id=3, k=100), now=120 * DT)
    for n in range(120, 150):
        core.tick(n * DT)
    assert core.state is ExecutorState.RUNNING
    assert c.clamped_commands > 0 and c.rate_limited_commands > 0


@pytest.mark.parametrize("k, period, words", [
    (100_000, 0.04, "max_chunk_length"),
    (3, 1e5, "max_step_period"),
    (25, 1e-4, "min_step_period"),
    (60, 0.04, "max_chunk_horizon"),  # 2.36 s
])
def test_a_chunk_beyond_the_bounds_is_rejected_and_cannot_take_over(robot, k, period, words):
    """Before: K = 100,000 or a 1e5 s step were accepted (horizon 4,000 s / 2e5 s)."""
    core = ExecutorCore(robot, ExecutorConfig(control_rate_hz=RATE))  # configured bounds
    big = ActionChunk(stamp=0.0, actions=np.tile(home(robot), (k, 1)),
                      joint_names=robot.joint_names, step_period=period, chunk_id=1)
    verdict = core.submit_chunk(big, now=0.0)
    assert not verdict.accepted and words in verdict.reason
    snap = core.snapshot(0.0)
    assert snap.remaining_horizon == 0.0 and len(core.buffer) == 0
    assert snap.counters.rejected_chunks_bounds == 1 and snap.counters.rejected_chunks == 1
    assert words in snap.last_rejection
    # The policy's own chunks (ALOHA OFT: 25 x 0.04 s) pass.
    assert core.submit_chunk(chunk(robot, 0.0, home(robot), chunk_id=2), now=0.0).accepted


def test_chunk_bounds_come_from_config(robot):
    params = load_node_params(default_config_path(), "chunk_executor")
    config = ExecutorConfig.from_params(params)
    assert config.max_chunk_length == params["max_chunk_length"]
    assert config.max_chunk_horizon == params["max_chunk_horizon"]
    assert config.min_step_period <= 0.04 <= config.max_step_period
    assert config.start_margin == params["start_margin"]
    with pytest.raises(ValueError, match="min_step_period"):
        ExecutorConfig(min_step_period=0.5, max_step_period=0.1)
    with pytest.raises(ValueError, match="max_chunk_length"):
        ExecutorConfig(max_chunk_length=0)


def test_joint_state_freshness_is_judged_by_its_header_stamp(robot):
    """A pose stamped in 1970 (unset), long ago or in the future is rejected even when it
    arrives now; before, arrival time decided and a 1970 stamp started the ramp."""
    core = make_core(robot, joint_state_timeout=0.5, max_future_stamp=0.5)
    now = 1000.0
    core.submit_chunk(chunk(robot, now, home(robot)), now=now)
    names = list(robot.arm_joint_names) + [robot.gripper_joint_name]
    values = [0.0] * 6 + [float(robot.unnormalize_gripper(0.5))]
    for stamp, words in ((0.0, "1970"), (now - 2.0, "old"), (now + 3.0, "ahead"),
                         (float("nan"), "non-finite")):
        for arm in robot.arms:
            assert not core.update_joint_state(arm, names, values, now, stamp=stamp)
        assert words in core.snapshot(now).last_rejection
        assert core.tick(now) is None
    assert core.counters.rejected_joint_states == 8
    assert "no joint state" in core.snapshot(now).idle_reason
    for arm in robot.arms:  # measured 0.1 s ago: fresh
        assert core.update_joint_state(arm, names, values, now, stamp=now - 0.1)
    assert core.tick(now) is not None


def test_chunk_ids_must_increase_while_the_plan_lasts(robot):
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=0.0)
    assert core.submit_chunk(chunk(robot, 0.0, home(robot), chunk_id=10), now=0.0).accepted
    for i in range(10):
        core.tick(i * DT)
    for chunk_id, stamp in ((3, 0.2), (10, 0.2), (10, 0.0)):  # backwards, duplicates
        verdict = core.submit_chunk(chunk(robot, stamp, home(robot) + 0.1, chunk_id=chunk_id),
                                    now=0.2)
        assert not verdict.accepted and "id not after" in verdict.reason
    assert core.counters.rejected_chunks_order == 3
    assert core.submit_chunk(chunk(robot, 0.2, home(robot), chunk_id=11), now=0.2).accepted
    assert core.snapshot(0.2).last_chunk_id == 11


def test_a_restarted_policy_takes_over_once_the_plan_has_run_out(robot, caplog):
    """Ids restart from 1 after a policy restart: accepted once the executor holds."""
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=0.0)
    assert core.submit_chunk(chunk(robot, 0.0, home(robot), chunk_id=57), now=0.0).accepted
    n = 0
    while core.state is not ExecutorState.HOLDING:
        held = core.tick(n * DT)
        n += 1
    now = n * DT
    assert now == pytest.approx((K - 1) * PERIOD + 0.2, abs=2 * DT)
    with caplog.at_level(logging.INFO, logger="vla_policy_node.control.executor"):
        verdict = core.submit_chunk(chunk(robot, now, home(robot) + 0.2, chunk_id=1), now=now)
    assert verdict.accepted
    assert any("new chunk sequence" in r.getMessage() for r in caplog.records)
    first = core.tick(now)
    assert core.state is ExecutorState.RAMPING
    assert np.all(np.abs(first - held) <= robot.max_velocity / RATE + 1e-12)
    # So does a policy after stop + resume.
    core.stop()
    core.resume()
    assert core.submit_chunk(chunk(robot, now, home(robot), chunk_id=1), now=now).accepted
    assert core.counters.rejected_chunks_order == 0


def test_a_replayed_old_chunk_is_rejected_even_after_the_plan_ran_out(robot):
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=0.0)
    assert core.submit_chunk(chunk(robot, 0.0, home(robot), k=50, chunk_id=4), now=0.0).accepted
    assert core.submit_chunk(chunk(robot, 0.1, home(robot), chunk_id=5), now=0.1).accepted
    n = 0
    while core.state is not ExecutorState.HOLDING:
        core.tick(n * DT)
        n += 1
    # Chunk 4 (K = 50) still reaches beyond now, but it is older than the last one accepted.
    verdict = core.submit_chunk(chunk(robot, 0.0, home(robot) + 0.3, k=50, chunk_id=4),
                                now=n * DT)
    assert not verdict.accepted and "out of order" in verdict.reason
    assert core.counters.rejected_chunks_order == 1


def test_a_clock_jump_back_clears_the_plan_and_holds(robot, caplog):
    """A simulation restarted (/clock back to 0): the old plan belongs to the old time line."""
    core = make_core(robot)
    feed_joint_states(core, robot, home(robot), now=100.0)
    target = home(robot) + 0.05
    assert core.submit_chunk(chunk(robot, 100.0, target, k=50, chunk_id=30), now=100.0).accepted
    for n in range(20):
        held = core.tick(100.0 + n * DT)
    with caplog.at_level(logging.WARNING, logger="vla_policy_node.control.executor"):
        np.testing.assert_array_equal(core.tick(1.0), held)
    assert any("clock jumped back" in r.getMessage() for r in caplog.records)
    assert len(core.buffer) == 0
    np.testing.assert_array_equal(core.tick(1.0 + DT), held)
    assert core.state is ExecutorState.HOLDING
    # A policy on the new time line (ids from 1) takes over through the ramp.
    assert core.submit_chunk(chunk(robot, 1.04, home(robot), chunk_id=1), now=1.04).accepted
    first = core.tick(1.04)
    assert core.state is ExecutorState.RAMPING
    assert np.all(np.abs(first - held) <= robot.max_velocity / RATE + 1e-12)
