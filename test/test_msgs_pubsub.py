"""vla_msgs over real DDS between two processes: every field arrives intact."""

from pathlib import Path
import sys

import numpy as np
import pytest
from ros_harness import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent / "ros_children"))
from publish_chunk import known_chunk  # noqa: E402


def test_action_chunk_crosses_processes_with_every_field(rclpy_context, spawn):
    import rclpy
    from vla_msgs.msg import ActionChunk as ActionChunkMsg

    from vla_policy_node.nodes.conversions import action_chunk_from_msg

    script = str(Path(__file__).resolve().parent / "ros_children" / "publish_chunk.py")
    child = spawn([sys.executable, script, "/test/chunks"], name="publisher")
    node = rclpy.create_node("chunk_listener", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    received = []
    node.create_subscription(ActionChunkMsg, "/test/chunks", received.append, 10)
    try:
        assert wait_until(lambda: received, 20.0,
                          step=lambda: executor.spin_once(timeout_sec=0.05)), child.output()
    finally:
        node.destroy_node()
    msg = received[0]
    expected = known_chunk()
    assert msg.header.stamp.sec == 1234
    assert msg.header.stamp.nanosec == pytest.approx(567_800_000, abs=1)
    assert msg.chunk_id == 42
    assert msg.instruction == expected.instruction
    assert list(msg.joint_names) == list(expected.joint_names)
    assert (msg.chunk_length, msg.action_dim) == (25, 14)
    assert len(msg.actions) == 25 * 14
    assert msg.step_period.sec == 0 and msg.step_period.nanosec == 40_000_000
    assert msg.model_latency.nanosec == 37_500_000
    chunk = action_chunk_from_msg(msg)
    np.testing.assert_array_equal(chunk.actions, expected.actions)  # row-major, exact
    assert chunk.stamp == pytest.approx(expected.stamp, abs=1e-9)
    assert chunk.step_period == pytest.approx(0.04)
    assert chunk.joint_names == expected.joint_names
