"""The Interbotix command messages, imported where they are needed, with a clear error.

``interbotix_xs_msgs`` comes from the Interbotix ROS 2 stack on a real ALOHA, or from the
project's stand-in (``scripts/interbotix_xs_msgs``: built by scripts/bootstrap.sh into the venv,
and by colcon when its directory is named as a base path; see docs/ros.md).
"""

from __future__ import annotations

from typing import Any

MISSING = (
    "interbotix_xs_msgs is not installed (the Interbotix command messages). On a ROS install "
    "build the suite's stand-in with the others: colcon build --base-paths src "
    "src/vla_ros/vla_msgs src/vla_ros/scripts/interbotix_xs_msgs (it never shadows a real "
    "one), or install the Interbotix ROS 2 stack (docs/ros.md); on a venv run "
    "scripts/bootstrap.sh")


def command_types() -> tuple[Any, Any]:
    """``(JointGroupCommand, JointSingleCommand)``.

    Raises:
        ValueError: the package is missing; the message says how to get it.
    """
    try:
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
    except ImportError as exc:
        raise ValueError(f"{MISSING} ({exc})") from None
    return JointGroupCommand, JointSingleCommand
