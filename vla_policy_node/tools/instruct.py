"""vla-instruct "text": send an instruction to the policy node where the ros2 CLI is absent.

Equivalent to:
  ros2 topic pub --once /vla/instruction std_msgs/msg/String "{data: 'fold the towel'}"
but waits until a subscriber has matched (up to --timeout) so the message is not lost.
"""

from __future__ import annotations

import argparse
import sys
import time

from vla_policy_node.config import default_config_path, load_node_params
from vla_policy_node.ros_env import apply_dds_profile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-instruct", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("instruction", help="the language instruction, e.g. 'fold the towel'")
    parser.add_argument("--topic", default=None,
                        help="instruction topic (default: instruction_topic of the config)")
    parser.add_argument("--config", default=None, help="parameter file (default: aloha.yaml)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the policy node to subscribe (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = args.instruction.strip()
    if not text:
        print("vla-instruct: the instruction is empty", file=sys.stderr)
        return 2
    topic = args.topic or load_node_params(
        args.config or default_config_path(), "vla_policy")["instruction_topic"]
    apply_dds_profile()
    import rclpy
    from std_msgs.msg import String
    rclpy.init()
    node = rclpy.create_node("vla_instruct")
    try:
        publisher = node.create_publisher(String, topic, 10)
        deadline = time.monotonic() + args.timeout
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                print(f"vla-instruct: no subscriber on {topic} after {args.timeout:.0f} s "
                      "(is vla_policy running, on the same ROS_DOMAIN_ID?)", file=sys.stderr)
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
        publisher.publish(String(data=text))
        # Reliable delivery needs the writer alive until the reader acknowledged.
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        print(f"vla-instruct: sent {text!r} on {topic}")
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
