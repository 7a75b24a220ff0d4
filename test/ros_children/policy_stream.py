"""Child process: a stand-in policy that streams action chunks on simulated time until killed.

Every ``every`` seconds of ROS time (``use_sim_time``: it follows the test's /clock) it
publishes a chunk of K actions, stamped now, ids from 1 (as a restarted policy node would),
that follow a slow sinusoid on one joint: ``home + amplitude * sin(2 t)``.

Usage: policy_stream.py TOPIC [K] [STEP_PERIOD] [EVERY] [AMPLITUDE]
"""

import sys

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.parameter import Parameter
from vla_policy_node.chunk import ActionChunk
from vla_policy_node.config import default_config_path, RobotConfig
from vla_policy_node.nodes.conversions import action_chunk_to_msg


def trajectory(robot: RobotConfig, times: np.ndarray, amplitude: float) -> np.ndarray:
    """(K, D) targets at ``times`` (K,): grippers half open, left_shoulder on a sinusoid."""
    pose = np.array([0.5 if name.endswith("gripper") else 0.0 for name in robot.joint_names])
    actions = np.tile(pose, (times.size, 1))
    actions[:, robot.joint_names.index("left_shoulder")] += amplitude * np.sin(2.0 * times)
    return actions


def main() -> None:
    topic = sys.argv[1]
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    period = float(sys.argv[3]) if len(sys.argv) > 3 else 0.04
    every = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
    amplitude = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
    robot = RobotConfig.from_file(default_config_path(), "chunk_executor")
    rclpy.init()
    node = rclpy.create_node("policy_stream", parameter_overrides=[
        Parameter("use_sim_time", Parameter.Type.BOOL, True)])
    from vla_msgs.msg import ActionChunk as ActionChunkMsg
    publisher = node.create_publisher(ActionChunkMsg, topic, 10)
    state = {"id": 0}

    def publish() -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        if now <= 0.0:  # no /clock yet
            return
        state["id"] += 1
        times = now + np.arange(k) * period
        publisher.publish(action_chunk_to_msg(ActionChunk(
            stamp=now, actions=trajectory(robot, times, amplitude),
            joint_names=tuple(robot.joint_names), step_period=period, chunk_id=state["id"])))

    node.create_timer(every, publish)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
