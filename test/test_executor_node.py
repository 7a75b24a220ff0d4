"""The chunk_executor node over real DDS, in its own process, on simulated time.

The test process plays the rest of the system: it drives ``/clock`` (so the control rate is
checked in simulated time, immune to the load of a shared CI machine), publishes joint states
and action chunks, and listens to the commands the executor emits.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
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
