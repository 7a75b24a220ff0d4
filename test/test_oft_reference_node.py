"""The official-layout fixture checkpoint through the vla_policy node (own process, real DDS):
the fixture's 480x640 frames and proprio as ROS messages in, the official actions out."""

from __future__ import annotations

import json
from pathlib import Path
import time

import numpy as np
import pytest
import yaml
from ros_harness import python_module

from vla_policy_node.config import RobotConfig

DATA = Path(__file__).parent / "data" / "oft_reference"
CAMERAS = {"cam_high": "/cam_high/camera/color/image_rect_raw",
           "cam_left_wrist": "/cam_left_wrist/camera/color/image_rect_raw",
           "cam_right_wrist": "/cam_right_wrist/camera/color/image_rect_raw"}
DRIVER = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]


class FixtureRobot:
    """Publishes one fixture observation (frames, joint states, instruction); collects chunks."""

    def __init__(self, context, obs: str) -> None:
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from vla_msgs.msg import ActionChunk
        from PIL import Image as PILImage
        self.Image, self.JointState, self.String = Image, JointState, String
        self.node = rclpy.create_node("fixture_robot", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.cameras = {c: self.node.create_publisher(Image, t, qos_profile_sensor_data)
                        for c, t in CAMERAS.items()}
        self.arms = [self.node.create_publisher(JointState, f"/{arm}/joint_states", 10)
                     for arm in ("follower_left", "follower_right")]
        self.instruction = self.node.create_publisher(String, "/vla/instruction", 10)
        self.chunks = []
        self.node.create_subscription(ActionChunk, "/vla/action_chunk", self.chunks.append, 10)
        meta = json.loads((DATA / "frames" / "observations.json").read_text())[obs]
        self.text = meta["instruction"]
        self.frames = {c: np.asarray(PILImage.open(DATA / "frames" / f"{obs}_{c}.png")
                                     .convert("RGB")) for c in CAMERAS}
        # Model proprio = [left 6 joints, left gripper 0..1, right 6, right gripper]; the node
        # normalizes driver gripper positions with config/aloha.yaml's calibration.
        robot = RobotConfig.from_file()
        proprio = np.asarray(meta["proprio"], dtype=np.float64)
        self.positions = []
        for half in (proprio[:7], proprio[7:]):
            driver = half.copy()
            driver[6] = robot.gripper_close_position + half[6] * (
                robot.gripper_open_position - robot.gripper_close_position)
            self.positions.append(driver.tolist())

    def publish(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for camera, publisher in self.cameras.items():
            frame = self.frames[camera]
            msg = self.Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8",
                             step=frame.shape[1] * 3)
            msg.header.stamp = stamp
            msg.data = frame.tobytes()
            publisher.publish(msg)
        for publisher, positions in zip(self.arms, self.positions):
            msg = self.JointState(name=DRIVER, position=positions)
            msg.header.stamp = stamp
            publisher.publish(msg)

    def run_until(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.instruction.publish(self.String(data=self.text))
            self.publish()
            stop = time.monotonic() + 0.2
            while time.monotonic() < stop:
                self.executor.spin_once(timeout_sec=0.02)
            if predicate():
                return True
        return False

    def close(self) -> None:
        self.node.destroy_node()


@pytest.mark.parametrize("obs", ["obs0"])
def test_node_publishes_the_official_actions(rclpy_context, spawn, tmp_path, obs):
    """Tolerance 1e-4 x action range: the node decodes rgb8 frames to the same arrays, so the
    only difference to the reference is the image chain's few one-grey-level pixels
    (test_oft_reference.py: 3e-6 of the range end to end)."""
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({"vla_policy": {"ros__parameters": {
        "checkpoint": str(DATA / "checkpoint"), "trigger": "fixed_rate",
        "inference_rate_hz": 2.0, "max_observation_age": 5.0}}}))
    node = spawn(python_module("vla_policy_node.nodes.vla_policy", "--ros-args", "--params-file",
                               "config/aloha.yaml", "--params-file", str(overrides)),
                 name="vla_policy")
    robot = FixtureRobot(rclpy_context, obs)
    try:
        # The first chunk may come from an observation before all inputs arrived in full.
        assert robot.run_until(lambda: any(m.instruction == robot.text for m in robot.chunks),
                               120.0), node.output()[-3000:]
        msg = [m for m in robot.chunks if m.instruction == robot.text][-1]
    finally:
        robot.close()
    with np.load(DATA / "expected.npz") as expected:
        reference = expected[f"{obs}_actions"]
    stats = json.loads((DATA / "checkpoint" / "dataset_statistics.json").read_text())
    action = stats["aloha_fixture"]["action"]
    span = np.asarray(action["max"]) - np.asarray(action["min"])
    actions = np.asarray(msg.actions).reshape(msg.chunk_length, msg.action_dim)
    assert actions.shape == reference.shape
    assert list(msg.joint_names) == list(RobotConfig.from_file().joint_names)
    rel = np.abs(actions - reference) / span
    assert rel.max() <= 1e-4, rel.max()
    assert node.poll() is None
