"""The sim_aloha node over real DDS: a separate process, commanded like a real ALOHA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from param_client import DiagnosticsListener, values
from ros_harness import python_module, REPO_ROOT, wait_until
from vla_policy_node.data.images import decode_image, encode_compressed

CONFIG = str(Path(REPO_ROOT) / "config" / "aloha.yaml")


def _start_sim(spawn, tmp_path: Path, **overrides: object):
    # Node-specific entries of a later parameter file override config/aloha.yaml's (a plain
    # -p would not: it is a /** entry, weaker than the file's sim_aloha section).
    settings = {"camera_height": 48, "camera_width": 64, "real_time_factor": 2.0, **overrides}
    override_file = tmp_path / "sim_overrides.yaml"
    override_file.write_text(yaml.safe_dump({"sim_aloha": {"ros__parameters": settings}}))
    args = ["--ros-args", "--params-file", CONFIG, "--params-file", str(override_file)]
    return spawn(python_module("vla_policy_node.nodes.sim_aloha", *args), name="sim")


class Probe:
    """A test-side node that listens to everything the sim publishes and sends commands."""

    def __init__(self, context) -> None:
        import rclpy
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64
        from std_srvs.srv import Trigger

        self.node = rclpy.create_node("sim_probe", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.clock: list[float] = []
        self.joints: dict[str, list] = {"follower_left": [], "follower_right": []}
        self.images: list = []
        self.rewards: list[float] = []
        self.success: list[bool] = []
        self.node.create_subscription(
            Clock, "/clock", lambda m: self.clock.append(
                m.clock.sec + m.clock.nanosec * 1e-9), reliable)
        for arm in self.joints:
            self.node.create_subscription(
                JointState, f"/{arm}/joint_states",
                lambda m, arm=arm: self.joints[arm].append(m), reliable)
        self.node.create_subscription(
            Image, "/cam_high/camera/color/image_rect_raw", self.images.append,
            qos_profile_sensor_data)
        self.node.create_subscription(Float64, "/sim/reward",
                                      lambda m: self.rewards.append(m.data), reliable)
        self.node.create_subscription(Bool, "/sim/success",
                                      lambda m: self.success.append(m.data), reliable)
        self.group = self.node.create_publisher(
            JointGroupCommand, "/follower_left/commands/joint_group", reliable)
        self.single = self.node.create_publisher(
            JointSingleCommand, "/follower_left/commands/joint_single", reliable)
        self.reset = self.node.create_client(Trigger, "/sim_aloha/reset")
        self.JointGroupCommand, self.JointSingleCommand = JointGroupCommand, JointSingleCommand
        self.Trigger = Trigger

    def spin(self) -> None:
        self.executor.spin_once(timeout_sec=0.02)

    def left(self, joint: str) -> float:
        msg = self.joints["follower_left"][-1]
        return msg.position[list(msg.name).index(joint)]

    def command_left(self, joints: list[float], gripper: float, name: str = "arm") -> None:
        self.group.publish(self.JointGroupCommand(name=name, cmd=joints))
        self.single.publish(self.JointSingleCommand(name="gripper", cmd=gripper))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def probe(rclpy_context):
    p = Probe(rclpy_context)
    yield p
    p.close()


def test_sim_publishes_like_aloha_and_follows_commands(spawn, probe: Probe,
                                                       tmp_path: Path) -> None:
    sim = _start_sim(spawn, tmp_path)
    assert wait_until(lambda: probe.images and probe.joints["follower_right"]
                      and len(probe.clock) > 10 and probe.rewards and probe.success,
                      timeout=15.0, step=probe.spin), sim.output()[-2000:]
    # /clock is simulated time, strictly increasing by the control period.
    clock = probe.clock[-10:]
    assert all(b > a for a, b in zip(clock, clock[1:]))
    assert clock[-1] - clock[-2] == pytest.approx(0.02, abs=1e-6)
    # Joint states: Interbotix names and units, stamped in simulated time.
    js = probe.joints["follower_left"][-1]
    assert list(js.name) == ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle",
                             "wrist_rotate", "gripper", "left_finger", "right_finger"]
    assert probe.left("shoulder") == pytest.approx(-0.96, abs=0.02)
    assert 0.0 < js.header.stamp.sec + js.header.stamp.nanosec * 1e-9 <= probe.clock[-1] + 0.1
    # Images: rgb8 at the configured resolution.
    image = probe.images[-1]
    assert (image.height, image.width, image.encoding) == (48, 64, "rgb8")
    assert len(image.data) == 48 * 64 * 3 and image.step == 64 * 3
    assert probe.rewards[-1] == 0.0 and probe.success[-1] is False

    # Commands from this process move the simulated left arm and open its gripper.
    start = [probe.left(j) for j in ("waist", "shoulder", "elbow", "forearm_roll",
                                     "wrist_angle", "wrist_rotate")]
    target = list(start)
    target[0] = 0.3

    def reached() -> bool:
        probe.command_left(target, 1.6214)
        return (abs(probe.left("waist") - 0.3) < 0.03 and probe.left("gripper") > 1.4
                and probe.left("left_finger") > 0.05)
    assert wait_until(reached, timeout=10.0, step=probe.spin), (
        probe.left("waist"), probe.left("gripper"), sim.output()[-2000:])
    right = probe.joints["follower_right"][-1]
    assert right.position[0] == pytest.approx(0.0, abs=0.01)   # the other arm stayed

    # Bad commands are rejected and counted, the arm does not move, the node survives.
    bad = [
        lambda: probe.group.publish(probe.JointGroupCommand(name="arm", cmd=[math.nan] * 6)),
        lambda: probe.group.publish(probe.JointGroupCommand(name="arm", cmd=[-1.0] * 3)),
        lambda: probe.group.publish(probe.JointGroupCommand(name="legs", cmd=[-1.0] * 6)),
        lambda: probe.single.publish(probe.JointSingleCommand(name="gripper", cmd=math.inf)),
        lambda: probe.single.publish(probe.JointSingleCommand(name="tail", cmd=0.0)),
    ]
    for _ in range(5):
        for send in bad:
            send()
        for _ in range(5):
            probe.spin()
    t_end = probe.clock[-1] + 0.5
    wait_until(lambda: probe.clock[-1] > t_end, timeout=5.0, step=probe.spin)
    assert sim.poll() is None
    assert probe.left("waist") == pytest.approx(0.3, abs=0.03)
    assert "rejected command for follower_left" in sim.output()

    # ~/reset starts a new episode: the arm is back at the start pose, time keeps going.
    assert probe.reset.wait_for_service(timeout_sec=5.0)
    future = probe.reset.call_async(probe.Trigger.Request())
    assert wait_until(future.done, timeout=5.0, step=probe.spin)
    assert future.result().success, future.result().message
    assert "seed 1" in future.result().message
    before = probe.clock[-1]
    assert wait_until(lambda: probe.clock[-1] > before + 0.2, timeout=5.0, step=probe.spin)
    assert abs(probe.left("waist")) < 0.01 and probe.left("gripper") < 1.0


def test_sim_renders_nothing_without_camera_subscribers(spawn, rclpy_context,
                                                        tmp_path: Path) -> None:
    """No camera subscriber: the node publishes joint states but renders no frame."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    sim = _start_sim(spawn, tmp_path, real_time_factor=0.0, task="insertion",
                     publish_clock=False)
    node = rclpy.create_node("sim_probe_quiet", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    states: list = []
    node.create_subscription(JointState, "/follower_right/joint_states", states.append,
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    try:
        assert wait_until(lambda: len(states) > 20, timeout=15.0,
                          step=lambda: executor.spin_once(timeout_sec=0.05)), sim.output()
        assert not node.get_publishers_info_by_topic("/clock")
        assert "insertion" in sim.output()
    finally:
        executor.shutdown()
        node.destroy_node()
    sim.stop()
    # The final report counts frames; with nobody listening none was rendered.
    log = sim.log_path.read_text()
    assert "stopped at sim time" in log and "'frames': 0" in log, log[-2000:]


def test_sim_publishes_jpeg_on_compressed_only_while_listened_to(spawn, rclpy_context,
                                                                 tmp_path: Path) -> None:
    """<topic>/compressed carries the frame as image_transport's compressed plugin would
    (JPEG at the configured quality, decodable by the policy node's decoder); nothing is
    encoded while nobody subscribes to it, even when the raw topic is listened to."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    topic = "/cam_high/camera/color/image_rect_raw"
    sim = _start_sim(spawn, tmp_path, jpeg_quality=75)
    node = rclpy.create_node("sim_probe_jpeg", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    diagnostics = DiagnosticsListener(rclpy_context)
    raw: dict[tuple[int, int], Image] = {}
    jpeg: dict[tuple[int, int], CompressedImage] = {}

    def stamp(msg) -> tuple[int, int]:
        return (msg.header.stamp.sec, msg.header.stamp.nanosec)

    # The /compressed subscriber on a node and executor of its own: with both subscriptions
    # on one executor, each received only every other frame here (raw the even ones, JPEG
    # the odd ones), so no stamp ever matched.
    jpeg_node = rclpy.create_node("sim_probe_jpeg_compressed", context=rclpy_context)
    jpeg_executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    jpeg_executor.add_node(jpeg_node)

    def spin() -> None:
        executor.spin_once(timeout_sec=0.02)
        jpeg_executor.spin_once(timeout_sec=0.02)
        diagnostics.spin()

    def counters() -> dict[str, int] | None:
        status = diagnostics.latest("sim_aloha: simulation")
        if status is None:
            return None
        found = values(status)
        return {key: int(found[key]) for key in ("frames", "jpeg_frames") if key in found}

    node.create_subscription(Image, topic, lambda m: raw.__setitem__(stamp(m), m),
                             qos_profile_sensor_data)
    try:
        # Raw only: frames are rendered and published, none is encoded.
        assert wait_until(lambda: len(raw) >= 3 and (counters() or {}).get("frames", 0) >= 3,
                          timeout=30.0, step=spin), sim.output()[-2000:]
        assert counters()["jpeg_frames"] == 0, counters()
        # A /compressed subscriber: JPEG frames of the raw frames, stamp for stamp.
        jpeg_sub = jpeg_node.create_subscription(
            CompressedImage, topic + "/compressed",
            lambda m: jpeg.__setitem__(stamp(m), m), qos_profile_sensor_data)
        assert wait_until(lambda: len(set(raw) & set(jpeg)) >= 3, timeout=30.0, step=spin), \
            (len(raw), len(jpeg), sorted(raw)[-3:], sorted(jpeg)[-3:], sim.output()[-2000:])
        for key in sorted(set(raw) & set(jpeg))[-3:]:
            frame, compressed = raw[key], jpeg[key]
            assert compressed.format == "rgb8; jpeg compressed bgr8"
            assert compressed.header.frame_id == frame.header.frame_id == \
                "cam_high_color_optical_frame"
            pixels = np.frombuffer(bytes(frame.data), np.uint8).reshape(48, 64, 3)
            # The configured quality (75, not the default 90), encoded like the --direct
            # writer and the converter's JPEG episodes.
            assert bytes(compressed.data) == encode_compressed(pixels, "jpeg", 75)
            decoded = decode_image(compressed)
            assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
            error = np.abs(decoded.astype(np.int16) - pixels.astype(np.int16))
            assert error.mean() < 3.0, error.mean()
        # /diagnostics comes once a second: wait for a report that counts the JPEG frames.
        assert wait_until(lambda: counters()["jpeg_frames"] > 0, timeout=10.0, step=spin), \
            counters()
        # The last /compressed subscriber leaves: encoding stops, rendering goes on.
        jpeg_node.destroy_subscription(jpeg_sub)
        history: list[dict[str, int]] = []

        def encoding_stopped() -> bool:
            latest = counters()
            if not history or latest != history[-1]:
                history.append(latest)
            return (len(history) >= 3 and history[-1]["jpeg_frames"] ==
                    history[-2]["jpeg_frames"] and history[-1]["frames"] >
                    history[-2]["frames"])
        assert wait_until(encoding_stopped, timeout=20.0, step=spin), history
    finally:
        diagnostics.close()
        jpeg_executor.shutdown()
        jpeg_node.destroy_node()
        executor.shutdown()
        node.destroy_node()
