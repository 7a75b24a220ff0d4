"""The vla_policy node running the RoboFlamingo family from a checkpoint, over real DDS."""

import numpy as np
import pytest
from test_policy_node import FakeRobot, policy_node_argv

from vla_policy_node.model.roboflamingo import build_roboflamingo, get_preset


@pytest.fixture
def robot(rclpy_context):
    fake = FakeRobot(rclpy_context)
    yield fake
    fake.close()


def _call(robot, client, request, timeout=30.0):
    assert client.wait_for_service(timeout_sec=timeout)
    future = client.call_async(request)
    assert robot.run_until(future.done, timeout, publish=True)
    return future.result()


def test_node_publishes_roboflamingo_chunks_and_resets_on_request(robot, spawn, tmp_path,
                                                                 rclpy_context):
    from std_srvs.srv import Trigger
    policy = build_roboflamingo(get_preset("tiny-roboflamingo-chunk"), seed=0)
    policy.save_pretrained(tmp_path / "roboflamingo")
    node = spawn(policy_node_argv(tmp_path, checkpoint=str(tmp_path / "roboflamingo"),
                                  trigger="fixed_rate", inference_rate_hz=4.0,
                                  max_observation_age=5.0), name="vla_policy")
    assert robot.run_until(lambda: len(robot.chunks) >= 3, 120.0, say="fold the towel"), \
        node.output()[-4000:]
    for msg in robot.chunks:
        assert (msg.chunk_length, msg.action_dim) == (10, 14)
        assert np.all(np.isfinite(msg.actions)) and msg.instruction == "fold the towel"
    client = robot.node.create_client(Trigger, "/vla_policy/reset")
    response = _call(robot, client, Trigger.Request())
    assert response.success and "history cleared" in response.message
    count = len(robot.chunks)
    assert robot.run_until(lambda: len(robot.chunks) > count + 1, 60.0), node.output()[-3000:]
    # Triggered at 4 Hz, trained on frames 0.2 s apart: the node says what to set...
    assert node.output().count("inference_rate_hz 5") == 1 and node.poll() is None
    # ...and says it again when `ros2 param set` brings another wrong spacing, not for 5 Hz.
    from param_client import ParameterClient
    params = ParameterClient(rclpy_context, "vla_policy")
    try:
        assert params.wait(30.0)
        assert params.set(inference_rate_hz=5.0)["inference_rate_hz"][0]
        assert params.set(inference_rate_hz=3.0)["inference_rate_hz"][0]
    finally:
        params.close()
    assert robot.run_until(lambda: node.output().count("inference_rate_hz 5") == 2, 10.0,
                           publish=False), node.output()[-3000:]


def test_family_mismatch_fails_at_start_up(spawn, tmp_path):
    from ros_harness import wait_until
    build_roboflamingo(get_preset("tiny-roboflamingo"), seed=0).save_pretrained(tmp_path / "rf")
    node = spawn(policy_node_argv(tmp_path, checkpoint=str(tmp_path / "rf"),
                                  policy_family="oft"), name="vla_policy")
    assert wait_until(lambda: node.poll() is not None, 90.0), node.output()
    assert node.poll() == 1 and "roboflamingo family" in node.output()


def test_demo_closes_the_loop_with_a_roboflamingo_checkpoint(spawn, tmp_path):
    """vla-demo (sim ALOHA + vla_policy + executor on sim time) driven by RoboFlamingo."""
    import json
    import sys
    build_roboflamingo(get_preset("tiny-roboflamingo-chunk"), seed=0).save_pretrained(
        tmp_path / "rf")
    summary_path = tmp_path / "summary.json"
    demo = spawn([sys.executable, "-m", "vla_policy_node.tools.demo", "--duration", "3",
                  "--quiet", "--checkpoint", str(tmp_path / "rf"), "--output-dir",
                  str(tmp_path / "demo"), "--json", str(summary_path)], name="vla-demo")
    assert demo.process.wait(timeout=400) == 0, demo.output()[-5000:]
    summary = json.loads(summary_path.read_text())
    logs = {p.name: p.read_text()[-2000:] for p in (tmp_path / "demo" / "logs").glob("*.log")}
    context = (summary, logs)
    assert summary["sim_seconds"] >= 3.0, context
    assert summary["chunks_published"] >= 2 and summary["rejected_chunks"] == 0, context
    assert summary["commands_per_sim_second"] >= 40, context
    assert summary["joint_motion_range"] > 0.02, context


def test_bringup_sim_runs_a_roboflamingo_checkpoint(spawn, rclpy_context, tmp_path):
    """`vla-bringup --sim true --checkpoint <roboflamingo dir>`: the family comes from the
    directory, chunks of the chunking head reach the executor, which commands the sim."""
    import os
    import signal
    import sys

    import rclpy
    from ros_harness import wait_until
    from std_msgs.msg import String
    from vla_msgs.msg import ActionChunk, ExecutorStatus
    build_roboflamingo(get_preset("tiny-roboflamingo-chunk"), seed=0).save_pretrained(
        tmp_path / "rf")
    bringup = spawn([sys.executable, "-m", "vla_policy_node.tools.bringup", "--sim", "true",
                     "--checkpoint", str(tmp_path / "rf")], name="bringup")
    node = rclpy.create_node("rf_bringup_listener", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    chunks, statuses = [], []
    node.create_subscription(ActionChunk, "/vla/action_chunk", chunks.append, 10)
    node.create_subscription(ExecutorStatus, "/vla/executor_status", statuses.append, 10)
    say = node.create_publisher(String, "/vla/instruction", 10)

    def spin():
        say.publish(String(data="transfer the cube"))
        executor.spin_once(timeout_sec=0.1)
    try:
        def accepted():
            return len(chunks) >= 3 and statuses and statuses[-1].accepted_chunks >= 2
        assert wait_until(accepted, 180.0, spin), bringup.output()[-4000:]
        assert all((c.chunk_length, c.action_dim) == (10, 14) for c in chunks)
        assert statuses[-1].rejected_chunks == 0 and statuses[-1].idle_reason == "", \
            statuses[-1]
        os.kill(bringup.process.pid, signal.SIGINT)
        assert bringup.process.wait(timeout=30) == 0, bringup.output()[-3000:]
    finally:
        node.destroy_node()
