"""The chunk_executor node over real DDS, in its own process, on simulated time.

The test process plays the rest of the system: it drives ``/clock`` (so the control rate is
checked in simulated time, immune to the load of a shared CI machine), publishes joint states
and action chunks, and listens to the commands the executor emits.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
import sys
import time

import numpy as np
import pytest
import yaml

from ros_harness import python_module
from vla_policy_node.chunk import ActionChunk
from vla_policy_node.config import default_config_path, RobotConfig

RATE = 50.0


@pytest.fixture(scope="module")
def robot() -> RobotConfig:
    return RobotConfig.from_file(default_config_path(), "chunk_executor")


def params_file(tmp_path: Path, **overrides) -> Path:
    document = yaml.safe_load(default_config_path().read_text())
    document["chunk_executor"]["ros__parameters"].update(overrides)
    path = tmp_path / "executor.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def home(robot: RobotConfig) -> np.ndarray:
    pose = np.zeros(robot.dim)
    for i, name in enumerate(robot.joint_names):
        pose[i] = 0.5 if name.endswith("gripper") else 0.0
    return pose


class Driver:
    """The rest of the robot system, in the test process."""

    def __init__(self, context, robot: RobotConfig) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        from vla_msgs.msg import ActionChunk as ActionChunkMsg
        from vla_msgs.msg import ExecutorStatus

        self.robot = robot
        self.node = rclpy.create_node("executor_test_driver", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.sim = 100.0
        self._Clock, self._JointState = Clock, JointState
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self.chunk_pub = self.node.create_publisher(ActionChunkMsg, "/vla/action_chunk", 10)
        self.joint_pubs = {arm: self.node.create_publisher(JointState, f"/{arm}/joint_states", 10)
                           for arm in robot.arms}
        self.received: dict[str, list[tuple[float, object]]] = defaultdict(list)
        self.listen(ExecutorStatus, "/vla/executor_status")
        self.pose: np.ndarray | None = None
        self.nan_arm: str | None = None
        self.chunk_id = 0
        # Joint states carry a header stamp (the executor judges freshness by it): simulated
        # time, or the wall clock for an executor without use_sim_time.
        self.wall_stamps = False
        self.stamp_offset = 0.0

    def listen(self, msg_type, topic: str) -> None:
        self.node.create_subscription(
            msg_type, topic, lambda msg: self.received[topic].append((self.sim, msg)), 10)

    @property
    def status(self):
        return self.received["/vla/executor_status"][-1][1]

    def _publish_joint_states(self) -> None:
        if self.pose is None:
            return
        for arm, group in self.robot.arm_group_indices().items():
            msg = self._JointState()
            stamp = (self.node.get_clock().now().nanoseconds * 1e-9 if self.wall_stamps
                     else self.sim) + self.stamp_offset
            if stamp > 0:
                msg.header.stamp.sec = int(stamp)
                msg.header.stamp.nanosec = int((stamp - int(stamp)) * 1e9)
            msg.name = list(group["driver_joint_names"]) + [
                self.robot.gripper_joint_name, "left_finger", "right_finger"]
            positions = list(self.pose[group["joint_indices"]]) + [
                float(self.robot.unnormalize_gripper(self.pose[group["gripper_index"]])),
                0.02, -0.02]
            if arm == self.nan_arm:
                positions[1] = float("nan")
            msg.position = positions
            self.joint_pubs[arm].publish(msg)

    def step(self, dt: float = 0.01) -> None:
        """Advance simulated time by ``dt`` and let messages flow for about ``dt`` wall time."""
        self.sim += dt
        msg = self._Clock()
        msg.clock.sec = int(self.sim)
        msg.clock.nanosec = int(round((self.sim - int(self.sim)) * 1e9)) % 1_000_000_000
        self.clock_pub.publish(msg)
        self._publish_joint_states()
        end = time.monotonic() + dt
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=max(0.0, end - time.monotonic()))

    def advance(self, seconds: float, chunk_every: float | None = None,
                target: np.ndarray | None = None) -> None:
        steps = int(round(seconds / 0.01))
        every = None if chunk_every is None else int(round(chunk_every / 0.01))
        for i in range(steps):
            if every is not None and i % every == 0:
                self.publish_chunk(target)
            self.step()

    def wait_for(self, predicate, wall_timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + wall_timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.step()
        return predicate()

    def chunk_msg(self, target: np.ndarray, k: int = 50):
        from vla_policy_node.nodes.conversions import action_chunk_to_msg
        self.chunk_id += 1
        return action_chunk_to_msg(ActionChunk(
            stamp=self.sim, actions=np.tile(target, (k, 1)), joint_names=self.robot.joint_names,
            step_period=0.04, chunk_id=self.chunk_id))

    def publish_chunk(self, target: np.ndarray) -> None:
        self.chunk_pub.publish(self.chunk_msg(target))

    def call(self, service: str, timeout: float = 10.0):
        from std_srvs.srv import Trigger
        client = self.node.create_client(Trigger, service)
        assert self.wait_for(client.service_is_ready, timeout), f"{service} not available"
        future = client.call_async(Trigger.Request())
        assert self.wait_for(future.done, timeout), f"{service} did not answer"
        self.node.destroy_client(client)
        return future.result()

    def count(self, topic: str, since: float) -> int:
        return sum(1 for t, _ in self.received[topic] if t > since)

    def last(self, topic: str):
        return self.received[topic][-1][1]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def start_executor(spawn, path: Path):
    return spawn(python_module("vla_policy_node.nodes.chunk_executor", "--ros-args",
                               "--params-file", str(path), "-p", "use_sim_time:=true"),
                 name="chunk_executor")


def test_interbotix_commands_rate_and_bad_input(robot, rclpy_context, spawn, tmp_path):
    from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

    executor = start_executor(spawn, params_file(tmp_path))
    driver = Driver(rclpy_context, robot)
    group, single = "/follower_left/commands/joint_group", "/follower_left/commands/joint_single"
    driver.listen(JointGroupCommand, group)
    driver.listen(JointSingleCommand, single)
    driver.listen(JointGroupCommand, "/follower_right/commands/joint_group")
    try:
        # 1. A NaN joint state on one arm: chunks arrive, but nothing may be commanded.
        driver.pose, driver.nan_arm = home(robot), "follower_left"
        assert driver.wait_for(lambda: driver.received["/vla/executor_status"]), \
            executor.output()
        target = home(robot)
        target[robot.joint_names.index("left_shoulder")] = 0.15
        target[robot.joint_names.index("left_gripper")] = 0.9
        target[robot.joint_names.index("right_elbow")] = -0.1
        assert driver.wait_for(lambda: (driver.publish_chunk(target) or True)
                               and driver.status.accepted_chunks > 0)
        driver.advance(0.5, chunk_every=0.25, target=target)
        assert not driver.received[group]
        assert driver.status.state == 0  # IDLE
        assert driver.status.rejected_joint_states > 0  # counted, never silent

        # 2. Valid joint states: ramp, then play the chunks.
        driver.nan_arm = None
        driver.advance(1.5, chunk_every=0.25, target=target)
        cmd = driver.last(group)
        assert cmd.name == "arm" and len(cmd.cmd) == 6
        np.testing.assert_allclose(cmd.cmd, target[:6], atol=1e-5)
        gripper = driver.last(single)
        assert gripper.name == "gripper"
        assert gripper.cmd == pytest.approx(robot.unnormalize_gripper(0.9), abs=1e-5)
        np.testing.assert_allclose(
            driver.last("/follower_right/commands/joint_group").cmd, target[7:13], atol=1e-5)
        # The ramp never moved faster than the rate limit.
        shoulders = [m.cmd[1] for _, m in driver.received[group]]
        assert np.all(np.abs(np.diff([0.0] + shoulders)) <= 1.5 / RATE + 1e-5)

        # 3. The rate, in simulated time.
        since = driver.sim
        driver.advance(1.0, chunk_every=0.25, target=target)
        assert abs(driver.count(group, since) - RATE) <= 3
        assert driver.status.state == 2  # RUNNING
        assert abs(driver.status.achieved_rate_hz - RATE) <= 3
        assert driver.status.starved_ticks == 0

        # 4. Bad chunks, each of which would move the arm if accepted, move nothing.
        bad_target = target + 1.0
        nan_msg = driver.chunk_msg(bad_target)
        nan_msg.actions[3] = float("nan")
        names_msg = driver.chunk_msg(bad_target)
        names_msg.joint_names = [f"joint_{i}" for i in range(robot.dim)]
        size_msg = driver.chunk_msg(bad_target)
        size_msg.chunk_length = 49
        rejected_before = driver.status.rejected_chunks
        since = driver.sim
        for msg in (nan_msg, names_msg, size_msg):
            driver.chunk_pub.publish(msg)
        driver.advance(0.5)
        assert driver.status.rejected_chunks == rejected_before + 3
        after = [m.cmd for t, m in driver.received[group] if t > since]
        assert after
        np.testing.assert_allclose(after, np.tile(target[:6], (len(after), 1)), atol=1e-5)
        assert executor.poll() is None, executor.output()

        # 5. The chunks run out: hold the last command.
        driver.advance(2.0)
        assert driver.status.state == 3  # HOLDING
        np.testing.assert_allclose(driver.last(group).cmd, target[:6], atol=1e-5)
        assert "rejected chunk" in executor.output()
    finally:
        driver.close()


def test_controller_outputs_and_pause_resume_stop(robot, rclpy_context, spawn, tmp_path):
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    path = params_file(tmp_path, output_types=["joint_trajectory", "float64_array"],
                       merge_strategy="replace")
    executor = start_executor(spawn, path)
    driver = Driver(rclpy_context, robot)
    traj, array = ("/follower_left/arm_controller/joint_trajectory",
                   "/follower_right/forward_position_controller/commands")
    driver.listen(JointTrajectory, traj)
    driver.listen(Float64MultiArray, array)
    try:
        driver.pose = home(robot)
        target = home(robot) + 0.05
        assert driver.wait_for(lambda: (driver.publish_chunk(target) or True)
                               and bool(driver.received["/vla/executor_status"])
                               and driver.status.accepted_chunks > 0), executor.output()
        driver.advance(1.0, chunk_every=0.25, target=target)
        msg = driver.last(traj)
        assert msg.joint_names == list(robot.arm_joint_names) + [robot.gripper_joint_name]
        point = msg.points[0]
        expected = list(target[:6]) + [robot.unnormalize_gripper(target[6])]
        np.testing.assert_allclose(point.positions, expected, atol=1e-9)
        assert point.time_from_start.nanosec == 20_000_000
        np.testing.assert_allclose(
            driver.last(array).data,
            list(target[7:13]) + [robot.unnormalize_gripper(target[13])], atol=1e-9)

        # Pause: hold, although new chunks (accepted) ask for another pose.
        assert driver.call("/chunk_executor/pause").success
        moved = home(robot) + 0.2
        since = driver.sim
        driver.advance(0.5, chunk_every=0.1, target=moved)
        assert driver.status.state == 4  # PAUSED
        held = [m.points[0].positions for t, m in driver.received[traj] if t > since]
        np.testing.assert_allclose(held, np.tile(expected, (len(held), 1)), atol=1e-9)

        # Resume: moves toward the new pose, under the rate limit.
        assert driver.call("/chunk_executor/resume").success
        driver.advance(1.0, chunk_every=0.1, target=moved)
        np.testing.assert_allclose(driver.last(traj).points[0].positions[:6], moved[:6],
                                   atol=1e-6)

        # Stop: hold, and chunks are rejected until resume.
        assert driver.call("/chunk_executor/stop").success
        rejected = driver.status.rejected_chunks
        since = driver.sim
        driver.advance(0.5, chunk_every=0.1, target=target)
        assert driver.status.state == 5  # STOPPED
        assert driver.status.rejected_chunks > rejected
        stopped = [m.points[0].positions[:6] for t, m in driver.received[traj] if t > since]
        np.testing.assert_allclose(stopped, np.tile(moved[:6], (len(stopped), 1)), atol=1e-6)
        assert executor.poll() is None, executor.output()
    finally:
        driver.close()


def test_wall_clock_mode_streams_commands(robot, rclpy_context, spawn, tmp_path):
    """Without use_sim_time the node ticks on the wall ROS clock (no /clock publisher)."""
    from interbotix_xs_msgs.msg import JointGroupCommand
    from vla_policy_node.nodes.conversions import action_chunk_to_msg

    executor = spawn(python_module("vla_policy_node.nodes.chunk_executor", "--ros-args",
                                   "--params-file", str(params_file(tmp_path))),
                     name="chunk_executor")
    driver = Driver(rclpy_context, robot)
    group = "/follower_right/commands/joint_group"
    driver.listen(JointGroupCommand, group)
    driver.pose = home(robot)
    driver.wall_stamps = True
    target = home(robot)
    target[robot.joint_names.index("right_waist")] = 0.05
    try:
        def publish_and_check() -> bool:
            now = driver.node.get_clock().now().nanoseconds * 1e-9
            driver.chunk_id += 1
            driver.chunk_pub.publish(action_chunk_to_msg(ActionChunk(
                stamp=now, actions=np.tile(target, (25, 1)), joint_names=robot.joint_names,
                step_period=0.04, chunk_id=driver.chunk_id)))
            return len(driver.received[group]) > 20
        assert driver.wait_for(publish_and_check, wall_timeout=20.0), executor.output()
        np.testing.assert_allclose(driver.last(group).cmd, target[7:13], atol=1e-5)
        assert executor.poll() is None
    finally:
        driver.close()


# ---------------------------------------------------------------------- issue 11: attacker tests
def test_hostile_joint_states_and_oversized_chunks_never_move_the_arm(robot, rclpy_context,
                                                                      spawn, tmp_path):
    """Joint states stamped 1970 (unset), then a pose far outside the limits (waist 50 rad,
    gripper 10 rad): nothing is commanded and the status says why; chunks beyond the bounds
    are rejected and counted. Before: the 1970 stamp started the ramp, and the ramp from
    50 rad sent 332 of 333 commands outside the limits."""
    from interbotix_xs_msgs.msg import JointGroupCommand

    from diagnostic_msgs.msg import DiagnosticArray

    executor = start_executor(spawn, params_file(tmp_path))
    driver = Driver(rclpy_context, robot)
    group = "/follower_left/commands/joint_group"
    driver.listen(JointGroupCommand, group)
    driver.listen(DiagnosticArray, "/diagnostics")
    try:
        target = home(robot)
        target[robot.joint_names.index("left_shoulder")] = 0.1
        # 1. Unset (1970) header stamps on every joint state.
        driver.pose = home(robot)
        driver.stamp_offset = -1e9
        assert driver.wait_for(lambda: (driver.publish_chunk(target) or True)
                               and bool(driver.received["/vla/executor_status"])
                               and driver.status.accepted_chunks > 0), executor.output()
        driver.advance(1.0, chunk_every=0.25, target=target)
        assert not driver.received[group]
        status = driver.status
        assert status.state == 0 and status.rejected_joint_states > 0
        assert "1970" in status.last_rejection, status.last_rejection
        assert "no joint state" in status.idle_reason, status.idle_reason

        # 2. Fresh stamps, but a pose far outside the limits: refused, and said so.
        driver.stamp_offset = 0.0
        driver.pose = home(robot)
        driver.pose[robot.joint_names.index("left_waist")] = 50.0
        driver.pose[robot.joint_names.index("left_gripper")] = robot.normalize_gripper(10.0)
        driver.advance(1.0, chunk_every=0.25, target=target)
        assert not driver.received[group]
        status = driver.status
        assert status.state == 0 and status.refused_start_ticks > 0
        assert "left_waist=50" in status.idle_reason, status.idle_reason
        assert "refusing to start" in executor.output()

        def refused_in_diagnostics() -> bool:
            return any(s.name == "chunk_executor: execution" and s.level in (2, b"\x02")
                       and "refusing to start" in s.message
                       for _, array in driver.received["/diagnostics"] for s in array.status)
        assert driver.wait_for(refused_in_diagnostics), executor.output()[-2000:]

        # 3. Chunks beyond the configured bounds: rejected whole, counted, with a reason.
        bounds_before = status.rejected_chunks_bounds
        slow = driver.chunk_msg(target, k=3)
        slow.step_period.sec = 100_000
        driver.chunk_pub.publish(slow)
        driver.chunk_pub.publish(driver.chunk_msg(target, k=101))
        driver.advance(0.3)
        assert driver.status.rejected_chunks_bounds == bounds_before + 2
        assert driver.status.remaining_horizon.sec < 2

        # 4. The arm is back inside its limits: it starts, and every command is inside.
        driver.pose = home(robot)
        driver.advance(1.5, chunk_every=0.25, target=target)
        commands = np.array([m.cmd for _, m in driver.received[group]])
        assert len(commands) > 20, executor.output()
        lo, hi = robot.position_min[:6], robot.position_max[:6]
        assert np.all((commands >= lo - 1e-6) & (commands <= hi + 1e-6))
        np.testing.assert_allclose(commands[-1], target[:6], atol=1e-5)
        assert driver.status.idle_reason == ""
        assert executor.poll() is None, executor.output()
    finally:
        driver.close()


def left_commands(driver, topic: str, since: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """(times (N,), commands (N, 6)) received on ``topic`` after ``since`` (simulated s)."""
    pairs = [(t, m.cmd) for t, m in driver.received[topic] if t > since]
    return np.array([t for t, _ in pairs]), np.array([c for _, c in pairs])


def test_policy_killed_holds_with_zero_motion_and_a_restarted_policy_resumes(
        robot, rclpy_context, spawn, tmp_path):
    """kill -9 of the policy process while chunks stream over DDS: the plan already received
    plays out, the executor holds within horizon + stale_timeout (1.16 s) with zero motion;
    a new policy process (ids from 1 again) takes over through the rate-limited ramp."""
    from interbotix_xs_msgs.msg import JointGroupCommand
    import signal

    k, period, stale = 25, 0.04, 0.2
    horizon = (k - 1) * period
    executor = start_executor(spawn, params_file(tmp_path, stale_timeout=stale))
    driver = Driver(rclpy_context, robot)
    group = "/follower_left/commands/joint_group"
    driver.listen(JointGroupCommand, group)
    driver.pose = home(robot)
    child = Path(__file__).parent / "ros_children" / "policy_stream.py"
    policy_argv = [sys.executable, str(child), "/vla/action_chunk", str(k), str(period), "0.2",
                   "0.1"]
    policy = spawn(policy_argv, name="policy")
    try:
        assert driver.wait_for(lambda: bool(driver.received["/vla/executor_status"])
                               and driver.status.state == 2, wall_timeout=30), \
            executor.output() + policy.output()
        driver.advance(1.0)
        _, running = left_commands(driver, group, driver.sim - 0.5)
        assert np.ptp(running[:, 1]) > 1e-3  # following the policy's moving target

        policy.send_signal(signal.SIGKILL)
        policy.process.wait(10)
        killed = driver.sim
        holding_at = None
        for i in range(300):  # 3 s of simulated time
            driver.step()
            if holding_at is None and driver.status.state == 3:
                holding_at = driver.sim
            if i == 30:  # the status (10 Hz) has caught up with the last chunk sent
                accepted = driver.status.accepted_chunks
        assert holding_at is not None, executor.output()
        # Status is published at 10 Hz and travels over DDS: 0.15 s of slack.
        assert holding_at - killed <= horizon + stale + 0.15, holding_at - killed
        times, after = left_commands(driver, group, killed)
        moving = times[1:][np.any(np.diff(after, axis=0) != 0, axis=1)]
        last_motion = moving[-1] if moving.size else killed
        assert last_motion - killed <= horizon + 0.1, last_motion - killed
        held = after[times >= holding_at]
        assert len(held) > 50
        assert np.all(held == held[0])  # zero motion while holding
        assert driver.status.accepted_chunks == accepted  # nothing arrived since the kill
        print(f"kill -9: motion ended {last_motion - killed:.2f} s and HOLDING "
              f"{holding_at - killed:.2f} s after the kill (sim time)")

        # A restarted policy numbers its chunks from 1 again: it takes over.
        order_rejections = driver.status.rejected_chunks_order
        restarted = driver.sim
        spawn(policy_argv, name="policy_restarted")
        assert driver.wait_for(lambda: driver.status.state == 2, wall_timeout=30), \
            executor.output()
        driver.advance(1.0)
        assert driver.status.rejected_chunks_order == order_rejections
        assert driver.status.accepted_chunks > accepted
        _, resumed = left_commands(driver, group, restarted)
        assert np.ptp(resumed[:, 1]) > 1e-3
        # Smooth throughout: no step above the rate limit, before, across the kill and after.
        _, every = left_commands(driver, group)
        steps = np.abs(np.diff(every, axis=0))
        bad = np.flatnonzero(np.any(steps > robot.max_velocity[:6] / RATE + 1e-6, axis=1))
        assert not bad.size, [every[max(0, b - 1):b + 2].tolist() for b in bad[:3]]
        assert executor.poll() is None, executor.output()
    finally:
        driver.close()


def change_lifecycle(driver: Driver, transition: str) -> bool:
    """`ros2 lifecycle set /chunk_executor <transition>` from the driver; True on success."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    ids = {"deactivate": Transition.TRANSITION_DEACTIVATE,
           "activate": Transition.TRANSITION_ACTIVATE,
           "shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN}
    client = driver.node.create_client(ChangeState, "/chunk_executor/change_state")
    try:
        assert driver.wait_for(client.service_is_ready), "no /chunk_executor/change_state"
        future = client.call_async(ChangeState.Request(transition=Transition(id=ids[transition])))
        assert driver.wait_for(future.done), f"lifecycle {transition} did not answer"
        return future.result().success
    finally:
        driver.node.destroy_client(client)


def test_lifecycle_never_lifts_an_operator_hold_and_shutdown_holds_for_good(
        robot, rclpy_context, spawn, tmp_path):
    """A lifecycle manager cycling deactivate/activate must not undo ~/stop or ~/pause (the
    arm would move again); after shutdown ~/resume and chunks are refused."""
    from std_msgs.msg import Float64MultiArray

    path = params_file(tmp_path, output_types=["float64_array", "float64_array"],
                       merge_strategy="replace")
    executor = start_executor(spawn, path)
    driver = Driver(rclpy_context, robot)
    topic = "/follower_left/forward_position_controller/commands"
    driver.listen(Float64MultiArray, topic)

    def left_since(since: float) -> np.ndarray:
        return np.array([m.data[:6] for t, m in driver.received[topic] if t > since])

    def cycle_and_expect_hold(state: int, held: np.ndarray, target: np.ndarray) -> None:
        assert change_lifecycle(driver, "deactivate")
        assert change_lifecycle(driver, "activate")
        since = driver.sim
        driver.advance(0.6, chunk_every=0.1, target=target)
        assert driver.status.state == state, (driver.status.state_name, executor.output())
        commands = left_since(since)
        assert len(commands) > 10
        np.testing.assert_allclose(commands, np.tile(held, (len(commands), 1)), atol=1e-9)

    try:
        driver.pose = home(robot)
        first, second = home(robot) + 0.05, home(robot) + 0.2
        assert driver.wait_for(lambda: (driver.publish_chunk(first) or True)
                               and bool(driver.received["/vla/executor_status"])
                               and driver.status.accepted_chunks > 0), executor.output()
        driver.advance(1.0, chunk_every=0.25, target=first)
        at_first = np.asarray(driver.last(topic).data[:6])
        np.testing.assert_allclose(at_first, first[:6], atol=1e-6)

        # ~/stop, then deactivate + activate: still stopped, no motion toward `second`.
        assert driver.call("/chunk_executor/stop").success
        cycle_and_expect_hold(5, at_first, second)
        # ~/pause likewise (chunks are merged while paused, but nothing moves).
        assert driver.call("/chunk_executor/resume").success
        assert driver.call("/chunk_executor/pause").success
        cycle_and_expect_hold(4, at_first, second)

        # While inactive, ~/resume is refused: the lifecycle holds.
        assert change_lifecycle(driver, "deactivate")
        refused = driver.call("/chunk_executor/resume")
        assert not refused.success and "inactive" in refused.message
        assert change_lifecycle(driver, "activate")
        assert driver.status.state == 4  # the operator's pause still stands
        # A deactivation that did the pausing is lifted by activate: the arm moves on.
        assert driver.call("/chunk_executor/resume").success
        driver.advance(1.0, chunk_every=0.1, target=second)
        assert change_lifecycle(driver, "deactivate")
        driver.advance(0.2)
        assert driver.status.state == 4
        assert change_lifecycle(driver, "activate")
        driver.advance(1.0, chunk_every=0.1, target=second)
        np.testing.assert_allclose(driver.last(topic).data[:6], second[:6], atol=1e-6)
        at_second = np.asarray(driver.last(topic).data[:6])

        # Shutdown holds for good: ~/resume and chunks are refused, nothing moves.
        assert change_lifecycle(driver, "deactivate")
        assert change_lifecycle(driver, "shutdown")
        refused = driver.call("/chunk_executor/resume")
        assert not refused.success and "shut down" in refused.message
        rejected = driver.status.rejected_chunks
        since = driver.sim
        driver.advance(0.6, chunk_every=0.1, target=first)
        assert driver.status.rejected_chunks > rejected
        assert "shut down" in driver.status.last_rejection
        commands = left_since(since)
        np.testing.assert_allclose(commands, np.tile(at_second, (len(commands), 1)), atol=1e-9)
        assert executor.poll() is None, executor.output()
    finally:
        driver.close()


def test_a_normal_start_reads_ok_in_diagnostics(robot, rclpy_context, spawn, tmp_path):
    """A start from a gripper resting just beyond "closed" (clamped within start_margin, as in
    the simulator) and its rate-limited ramp are expected: /diagnostics stays OK and shows
    them as values. Before, both bumped clamped/rate-limited commands and every start, resume
    and reset read WARN."""
    from diagnostic_msgs.msg import DiagnosticArray

    executor = start_executor(spawn, params_file(tmp_path))
    driver = Driver(rclpy_context, robot)
    driver.listen(DiagnosticArray, "/diagnostics")

    def execution(since: float) -> list:
        return [s for t, array in driver.received["/diagnostics"] if t > since
                for s in array.status if s.name == "chunk_executor: execution"]
    try:
        driver.pose = home(robot)
        driver.pose[robot.joint_names.index("right_gripper")] = -0.02
        target = home(robot) + 0.6 * np.eye(robot.dim)[1]  # a ramp of several ticks
        assert driver.wait_for(lambda: bool(execution(-np.inf))), executor.output()
        since = driver.sim
        driver.advance(3.0, chunk_every=0.25, target=target)
        assert driver.status.state == 2, driver.status.state_name  # running
        statuses = execution(since)
        assert len(statuses) >= 2
        assert [s.level for s in statuses] == [statuses[0].level] * len(statuses)
        assert statuses[0].level in (0, b"\x00"), [s.message for s in statuses]
        values = {kv.key: kv.value for kv in statuses[-1].values}
        assert values["clamped_start_poses"] == "1"
        assert int(values["ramp_rate_limited_commands"]) > 0
        assert values["clamped_commands"] == values["rate_limited_commands"] == "0"
        assert executor.poll() is None, executor.output()
    finally:
        driver.close()
