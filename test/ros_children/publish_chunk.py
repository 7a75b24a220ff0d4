"""Child process: publish a known ActionChunk repeatedly until killed (for the pub/sub test)."""

import sys

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from vla_policy_node.chunk import ActionChunk
from vla_policy_node.nodes.conversions import action_chunk_to_msg


def known_chunk() -> ActionChunk:
    k, d = 25, 14
    return ActionChunk(
        stamp=1234.5678,
        actions=np.arange(k * d, dtype=np.float64).reshape(k, d) * 0.001 - 0.1,
        joint_names=tuple(f"joint_{i}" for i in range(d)),
        step_period=0.04,
        chunk_id=42,
        instruction="transfer the red cube to the other arm",
        model_latency=0.0375,
    )


def main() -> None:
    topic = sys.argv[1]
    rclpy.init()
    node = rclpy.create_node("chunk_publisher")
    from vla_msgs.msg import ActionChunk as ActionChunkMsg
    publisher = node.create_publisher(ActionChunkMsg, topic, 10)
    msg = action_chunk_to_msg(known_chunk())
    node.create_timer(0.05, lambda: publisher.publish(msg))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
