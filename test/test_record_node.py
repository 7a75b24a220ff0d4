"""vla-record over real DDS: the node in its own process, the robot and the services here."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_harness import python_module, wait_until

from vla_policy_node.data.convert import convert_bags
from vla_policy_node.data.episodes import Episode
from vla_policy_node.data.spec import DataSpec

SPEC = DataSpec.from_file()
DRIVER = list(SPEC.robot.arm_joint_names) + [SPEC.robot.gripper_joint_name]


def recorder_argv(directory: Path, **overrides: object) -> list[str]:
    path = directory / "overrides.yaml"
    path.write_text(yaml.safe_dump({"vla_recorder": {"ros__parameters": overrides}}))
    return python_module("vla_policy_node.nodes.recorder", "--ros-args", "--params-file",
                         "config/aloha.yaml", "--params-file", str(path))


class Teleop:
    """Publishes what an ALOHA teleoperation publishes and calls the recorder's services."""

    def __init__(self, context: object) -> None:
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_srvs.srv import Trigger
        from vla_msgs.srv import SetInstruction
        self.Image, self.JointState = Image, JointState
        self.node = rclpy.create_node("teleop", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.cameras = [self.node.create_publisher(Image, t, qos_profile_sensor_data)
                        for t in SPEC.camera_topics]
        self.joints = [self.node.create_publisher(JointState, t, 10) for t in
                       list(SPEC.proprio_topics().values())
                       + [a["joints"] for a in SPEC.action_topics().values()]]
        self.clients = {name: self.node.create_client(Trigger, f"/vla_recorder/{name}")
                        for name in ("start", "stop", "discard", "mark_success")}
        self.instruction_client = self.node.create_client(
            SetInstruction, "/vla_recorder/set_instruction")
        self.Trigger, self.SetInstruction = Trigger, SetInstruction
        self.k = 0

    def publish(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for c, publisher in enumerate(self.cameras):
            msg = self.Image(height=24, width=32, encoding="rgb8", step=96)
            msg.header.stamp = stamp
            msg.data = bytes([(self.k + 40 * c) % 256]) * (24 * 96)
            publisher.publish(msg)
        for j, publisher in enumerate(self.joints):
            msg = self.JointState(name=DRIVER)
            msg.header.stamp = stamp
            msg.position = [0.01 * self.k + 0.1 * j] * 6 + [0.5]
            publisher.publish(msg)
        self.k += 1

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.publish()
            self.executor.spin_once(timeout_sec=0.02)

    def call(self, name: str, request: object = None) -> object:
        client = self.instruction_client if name == "set_instruction" else self.clients[name]
        assert wait_until(client.service_is_ready, 30.0,
                          lambda: self.executor.spin_once(timeout_sec=0.05)), name
        future = client.call_async(request or self.Trigger.Request())
        while not future.done():
            self.publish()
            self.executor.spin_once(timeout_sec=0.02)
        return future.result()


@pytest.fixture
def teleop(rclpy_context: object):
    fake = Teleop(rclpy_context)
    yield fake
    fake.node.destroy_node()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_records_converts_and_discards(teleop: Teleop, spawn, tmp_path: Path,
                                       storage: str) -> None:
    bags = tmp_path / "bags"
    node = spawn(recorder_argv(tmp_path, output_dir=str(bags), storage=storage),
                 name="vla_recorder")
    reply = teleop.call("set_instruction", teleop.SetInstruction.Request(
        instruction="stack the cups"))
    assert reply.success, (reply.message, node.output())
    assert not teleop.call("stop").success  # nothing recording: refused, the node lives on
    assert teleop.call("start").success
    assert not teleop.call("start").success
    teleop.run(2.0)
    assert teleop.call("mark_success").success
    reply = teleop.call("stop")
    assert reply.success, reply.message
    episodes = sorted(p for p in bags.iterdir())
    assert len(episodes) == 1 and episodes[0].name.startswith("episode_0000_"), episodes

    # A discarded episode leaves nothing behind.
    assert teleop.call("start").success
    teleop.run(0.5)
    assert teleop.call("discard").success
    assert sorted(p for p in bags.iterdir()) == episodes
    assert node.poll() is None, node.output()

    [report] = convert_bags(episodes, SPEC, tmp_path / "data")
    assert report.status == "converted", (report.error, node.output())
    assert report.instruction == "stack the cups" and report.success is True
    with Episode(tmp_path / "data" / report.outputs[0]) as ep:
        assert ep.instruction == "stack the cups" and ep.success
        assert len(ep) >= 25  # ~2 s at the 25 Hz training rate
        assert ep.image(SPEC.camera_names[0], 0).shape == (24, 32, 3)
        # Leader arms -> actions, followers -> proprio: values published above.
        assert np.all(np.diff(ep.qpos[:, 0]) >= 0)



def test_help_prints_usage_and_starts_no_node(tmp_path: Path) -> None:
    """``vla-record --help`` once started a recorder on domain 0 and never returned."""
    import subprocess
    script = Path(sys.executable).with_name("vla-record")
    argv = [str(script)] if script.is_file() else python_module(
        "vla_policy_node.nodes.recorder")
    run = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: vla-record")
    assert "output_dir (default '~/vla_data/bags')" in run.stdout
    assert run.stderr == "" and not (tmp_path / "vla_data").exists()
    bad = subprocess.run(argv + ["--output-dir", "x"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unrecognized arguments: --output-dir x" in bad.stderr
