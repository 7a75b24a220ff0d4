"""The vla_policy node in its own process, fed over real DDS from the test process."""

import time

import numpy as np
import pytest
import yaml
from ros_harness import python_module, wait_until

from vla_policy_node.config import RobotConfig

CAMERA_TOPICS = ["/cam_high/camera/color/image_rect_raw",
                 "/cam_left_wrist/camera/color/image_rect_raw",
                 "/cam_right_wrist/camera/color/image_rect_raw"]
DRIVER = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]


def policy_node_argv(directory, **overrides):
    """argv of the node with config/aloha.yaml, then ``overrides`` as a second params file.

    (rcl applies --params-file after -p, so overrides go in a file, as vla-bringup does.)
    """
    path = directory / "overrides.yaml"
    path.write_text(yaml.safe_dump({"vla_policy": {"ros__parameters": overrides}}))
    return python_module("vla_policy_node.nodes.vla_policy", "--ros-args", "--params-file",
                         "config/aloha.yaml", "--params-file", str(path))


class FakeRobot:
    """Publishes cameras, joint states and instructions; collects chunks and status."""

    def __init__(self, context):
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from vla_msgs.msg import ActionChunk, PolicyStatus
        self.rclpy = rclpy
        self.Image, self.JointState = Image, JointState
        self.node = rclpy.create_node("fake_robot", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.cameras = [self.node.create_publisher(Image, t, qos_profile_sensor_data)
                        for t in CAMERA_TOPICS]
        self.arms = {arm: self.node.create_publisher(JointState, f"/{arm}/joint_states", 10)
                     for arm in ("follower_left", "follower_right")}
        self.instruction = self.node.create_publisher(String, "/vla/instruction", 10)
        self.String = String
        self.chunks, self.statuses = [], []
        self.node.create_subscription(ActionChunk, "/vla/action_chunk", self.chunks.append, 10)
        self.node.create_subscription(PolicyStatus, "/vla/policy_status",
                                      self.statuses.append, 10)
        rng = np.random.default_rng(1)
        # 120x160: the smallest frame config/aloha.yaml accepts (480x640 cameras, factor 4).
        self.frames = [rng.integers(0, 255, (120, 160, 3), np.uint8).tobytes()
                       for _ in CAMERA_TOPICS]
        self.stamps = []

    def image(self, data, stamp, encoding="rgb8", height=120, width=160, step=None):
        msg = self.Image(height=height, width=width, encoding=encoding,
                         step=width * 3 if step is None else step)
        msg.header.stamp = stamp
        msg.data = data
        return msg

    def publish_observation(self, positions=None):
        stamp = self.node.get_clock().now().to_msg()
        self.stamps.append(stamp.sec + stamp.nanosec * 1e-9)
        for publisher, frame in zip(self.cameras, self.frames):
            publisher.publish(self.image(frame, stamp))
        for k, publisher in enumerate(self.arms.values()):
            msg = self.JointState(name=DRIVER)
            msg.position = positions or [0.1 * k, -0.2, 0.3, 0.0, 0.1, 0.0, 1.2]
            msg.header.stamp = stamp
            publisher.publish(msg)

    def say(self, text):
        self.instruction.publish(self.String(data=text))

    def run(self, seconds, publish=True):
        end = time.monotonic() + seconds
        next_frame = 0.0
        while time.monotonic() < end:
            if publish and time.monotonic() >= next_frame:
                self.publish_observation()
                next_frame = time.monotonic() + 0.05
            self.executor.spin_once(timeout_sec=0.01)

    def run_until(self, predicate, timeout, publish=True, say=None):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if say:
                self.say(say)  # repeated: subscribers miss messages during discovery
            self.run(0.2, publish)
            if predicate():
                return True
        return False

    def close(self):
        self.node.destroy_node()


@pytest.fixture
def robot(rclpy_context):
    fake = FakeRobot(rclpy_context)
    yield fake
    fake.close()


def test_chunks_have_shape_stamps_names_and_follow_the_instruction(robot, spawn, tmp_path):
    node = spawn(policy_node_argv(tmp_path, trigger="fixed_rate", inference_rate_hz=4.0,
                                  max_observation_age=5.0), name="vla_policy")
    assert robot.run_until(lambda: len(robot.chunks) >= 2, 90.0, say="fold the towel"), \
        node.output()
    names = list(RobotConfig.from_file().joint_names)
    for msg in robot.chunks:
        assert (msg.chunk_length, msg.action_dim) == (25, 14)
        assert len(msg.actions) == 25 * 14 and np.all(np.isfinite(msg.actions))
        assert list(msg.joint_names) == names
        assert msg.instruction == "fold the towel"
        assert msg.step_period.nanosec == 40_000_000
        assert msg.model_latency.sec > 0 or msg.model_latency.nanosec > 0
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        # Stamped with the capture time of an observation we sent, not the publish time.
        assert min(abs(stamp - s) for s in robot.stamps) < 1e-6
    ids = [m.chunk_id for m in robot.chunks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first = np.array(robot.chunks[-1].actions)

    count = len(robot.chunks)
    assert robot.run_until(
        lambda: any(m.instruction == "insert the peg" for m in robot.chunks[count:]), 60.0,
        say="insert the peg"), node.output()
    changed = [m for m in robot.chunks[count:] if m.instruction == "insert the peg"][0]
    # Same images and joints, other words: the model's conditioning changed the actions.
    assert not np.allclose(np.array(changed.actions), first)
    assert node.poll() is None


def test_bad_inputs_are_counted_and_survived(robot, spawn, tmp_path):
    node = spawn(policy_node_argv(tmp_path, trigger="fixed_rate", inference_rate_hz=2.0,
                                  max_observation_age=5.0, status_period=0.2),
                 name="vla_policy")
    assert robot.run_until(lambda: robot.chunks, 90.0, say="fold the towel"), node.output()
    stamp = robot.node.get_clock().now().to_msg()
    frame = robot.frames[0]
    bad_images = [
        robot.image(frame, stamp, encoding="yuv422"),                 # unsupported encoding
        robot.image(frame[:1000], stamp),                             # data shorter than size
        robot.image(b"", stamp, height=0, width=0, step=0),           # zero size
        robot.image(frame, stamp, step=10),                           # step < width * 3
    ]
    for i in range(10_000):  # a flood of malformed messages
        robot.cameras[i % 3].publish(bad_images[i % len(bad_images)])
        if i % 500 == 0:
            robot.executor.spin_once(timeout_sec=0)
    for positions in ([float("nan")] * 7, [0.0] * 3):  # NaN joints; too few positions
        for publisher in robot.arms.values():
            msg = robot.JointState(name=DRIVER, position=positions)
            publisher.publish(msg)
    for publisher in robot.arms.values():  # missing joints
        publisher.publish(robot.JointState(name=["waist"], position=[0.0]))
    for i in range(500):  # instruction flood, ending with an empty and an oversized one
        robot.say(f"fold the towel {i % 3}")
    # A NUL inside the text, as a C++ publisher can send it (rclpy would cut it at "fold");
    # first, so that its (throttled) log line is the one printed.
    text = b"fold\x00 the towel"
    robot.instruction.publish(b"\x00\x01\x00\x00" + len(text + b"\x00").to_bytes(4, "little")
                              + text + b"\x00")
    robot.say("")
    robot.say("x" * 5000)

    def counted():
        if not robot.statuses:
            return False
        s = robot.statuses[-1]
        return (s.rejected_images >= 100 and s.rejected_joint_states >= 4
                and s.rejected_instructions >= 3)
    assert robot.run_until(counted, 60.0, publish=False), (
        robot.statuses[-1] if robot.statuses else None, node.output()[-3000:])
    assert "NUL character at position 4" in node.output()
    assert robot.statuses[-1].instruction != "fold"
    # Still alive and still predicting from good data.
    count = len(robot.chunks)
    assert robot.run_until(lambda: len(robot.chunks) > count, 60.0), node.output()[-3000:]
    assert node.poll() is None


def test_instruction_parameter_starts_the_node_with_that_instruction(robot, spawn, tmp_path):
    """`-p instruction:=...` (and a `ros2 param dump` that holds one) starts a node that acts
    on it without any instruction message (it failed at start: the worker's event was not
    made yet)."""
    node = spawn(policy_node_argv(tmp_path, instruction="fold the towel", trigger="fixed_rate",
                                  inference_rate_hz=5.0), name="vla_policy")
    assert robot.run_until(lambda: robot.chunks, 90.0), node.output()[-3000:]
    assert robot.chunks[-1].instruction == "fold the towel" and node.poll() is None


def test_stale_inputs_stop_inference(robot, spawn, tmp_path):
    node = spawn(policy_node_argv(tmp_path, trigger="fixed_rate", inference_rate_hz=5.0,
                                  max_observation_age=0.3, status_period=0.2),
                 name="vla_policy")
    assert robot.run_until(lambda: robot.chunks, 90.0, say="fold the towel"), node.output()
    robot.run(1.0, publish=False)  # inputs go stale
    count = len(robot.chunks)
    robot.run(1.5, publish=False)
    assert len(robot.chunks) == count
    assert robot.statuses[-1].inferences_skipped > 0
    assert "stale" in robot.statuses[-1].last_skip_reason
    # ~/reset on a family without history says so (it claimed "history cleared" for OFT)
    from std_srvs.srv import Trigger
    client = robot.node.create_client(Trigger, "/vla_policy/reset")
    assert client.wait_for_service(timeout_sec=30.0)
    future = client.call_async(Trigger.Request())
    assert robot.run_until(future.done, 30.0, publish=False)
    assert future.result().success and "keeps no history" in future.result().message


def test_missing_checkpoint_fails_at_start_up_with_a_clear_message(spawn, tmp_path):
    node = spawn(policy_node_argv(tmp_path, checkpoint="/nonexistent/oft-checkpoint"),
                 name="vla_policy")
    assert wait_until(lambda: node.poll() is not None, 60.0), node.output()
    assert node.poll() == 1
    output = node.output()
    assert "cannot start" in output and "/nonexistent/oft-checkpoint" in output


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_images_of_unexpected_size_are_rejected_before_decoding(robot, spawn, tmp_path):
    """4000x4000 and 1x1 rgb8 frames (config: 480x640, factor 4) are rejected and counted;
    inference goes on with the good frames, and the node does not grow (a 4000x4000 frame
    was once inferred, leaving the node 156 MB larger; a 1x1 one failed inferences)."""
    node = spawn(policy_node_argv(tmp_path, trigger="fixed_rate", inference_rate_hz=4.0,
                                  max_observation_age=5.0, status_period=0.2),
                 name="vla_policy")
    assert robot.run_until(lambda: len(robot.chunks) >= 3, 90.0, say="fold the towel"), \
        node.output()
    robot.run(1.0)
    before = rss_mb(node.process.pid)
    statuses = len(robot.statuses)
    huge = np.full((4000, 4000, 3), 7, np.uint8).tobytes()
    tiny = b"\x80\x80\x80"

    def rejected():
        return robot.statuses[-1].rejected_images if len(robot.statuses) > statuses else 0

    def send_until(image, height, width, log, count):
        for _ in range(20):  # best effort: a 48 MB frame that loses a fragment never arrives
            stamp = robot.node.get_clock().now().to_msg()
            robot.cameras[0].publish(robot.image(image, stamp, height=height, width=width))
            robot.run(0.5, publish=False)
            if rejected() >= count and log in node.output():  # the log is throttled (2 s)
                return True
        return False
    assert send_until(tiny, 1, 1, "image of 1x1 outside the accepted 120..1920 x 160..2560",
                      1), (robot.statuses[-1:], node.output()[-3000:])
    assert send_until(huge, 4000, 4000, "image of 4000x4000 outside the accepted", 2), (
        robot.statuses[-1:], node.output()[-3000:])
    assert robot.statuses[-1].inference_errors == 0
    output = node.output()
    count = len(robot.chunks)
    assert robot.run_until(lambda: len(robot.chunks) >= count + 3, 60.0), output[-3000:]
    robot.run(1.0)
    assert robot.statuses[-1].inference_errors == 0
    # Fast DDS keeps the ~60 MB it reassembled the 48 MB samples in (once, with or without
    # this check); decoding and inferring the frame cost the node 156 MB more.
    assert rss_mb(node.process.pid) - before < 100, (before, rss_mb(node.process.pid))
    assert node.poll() is None
