"""What keeps a ROS 2 install (Humble or Jazzy) working, checked where no such install exists.

* The requirement files: the one a ROS install uses holds no ROS wheels, no colcon and nothing
  that would replace the system numpy its message modules are compiled against; the venv's
  files are what the venv has.
* The interfaces use only types both distributions define identically.
* The Humble code path of Ctrl-C: rclpy's handler there does not shut the context down, ours
  must (tested by calling our handler with the context still up).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
import re
import signal

import pytest

REPO = Path(__file__).resolve().parent.parent
ML = REPO / "requirements-ml.txt"
WHEELS = REPO / "requirements-ros-wheels.txt"
VENV = REPO / "requirements.txt"
ROS_PACKAGES = re.compile(r"^(ros-|rclpy|colcon|catkin|rosidl|ament)", re.IGNORECASE)
# From apt on a ROS install (package.xml): pip versions would replace the system's.
SYSTEM_PACKAGES = ("numpy", "opencv-python", "opencv-python-headless", "pyyaml",
                   "matplotlib")


def requirements(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def name_of(requirement: str) -> str:
    return re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0]


def test_the_ros_install_requirements_leave_ros_and_the_system_alone():
    ml = requirements(ML)
    assert ml and all("==" in r for r in ml), ml  # pinned
    names = [name_of(r).lower() for r in ml]
    assert not [n for n in names if ROS_PACKAGES.match(n)], names
    assert not [n for n in names if n in SYSTEM_PACKAGES], names
    assert not [r for r in ml if r.startswith("-r")]  # includes nothing else
    # package.xml names the system packages instead.
    package_xml = (REPO / "package.xml").read_text()
    for key in ("python3-numpy", "python3-yaml", "python3-opencv", "python3-matplotlib",
                "diagnostic_msgs", "interbotix_xs_msgs"):
        assert f"<exec_depend>{key}</exec_depend>" in package_xml, key


def test_the_venv_requirements_are_the_ros_install_ones_plus_wheels_and_tools():
    venv = requirements(VENV)
    assert "-r requirements-ml.txt" in venv and "-r requirements-ros-wheels.txt" in venv
    wheels = [name_of(r) for r in requirements(WHEELS)]
    ros = [n for n in wheels if n.startswith("ros-")]
    assert ros and all(n.startswith("ros-jazzy-") for n in ros), ros  # one distribution
    assert "ros-jazzy-diagnostic-msgs" in wheels
    all_names = [name_of(r).lower() for path in (ML, WHEELS, VENV)
                 for r in requirements(path) if not r.startswith("-r")]
    assert len(all_names) == len(set(all_names)), "a package pinned twice"


@pytest.mark.parametrize("path", [ML, WHEELS, VENV], ids=lambda p: p.name)
def test_every_pin_is_what_the_venv_has(path):
    wrong = {}
    for requirement in requirements(path):
        if requirement.startswith("-r") or "==" not in requirement:
            continue
        name, pinned = name_of(requirement), requirement.split("==")[1].strip()
        installed = importlib.metadata.version(name)
        if installed.split("+")[0] != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, wrong


ALLOWED_FIELD_TYPES = {
    # primitive types and the message types both Humble and Jazzy define identically
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
    "uint32", "int64", "uint64", "string", "std_msgs/Header", "builtin_interfaces/Time",
    "builtin_interfaces/Duration",
}


@pytest.mark.parametrize("path", sorted((REPO / "vla_msgs").rglob("*.msg"))
                         + sorted((REPO / "vla_msgs").rglob("*.srv"))
                         + sorted((REPO / "scripts" / "interbotix_xs_msgs").rglob("*.msg")),
                         ids=lambda p: p.name)
def test_interfaces_use_types_both_distributions_define(path):
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line == "---":
            continue
        field_type = line.split()[0]
        base = re.sub(r"\[.*\]$", "", field_type).split("<=")[0]
        assert base in ALLOWED_FIELD_TYPES, (path.name, line)


def test_humble_style_signal_leaves_no_context_up_and_raises_nothing():
    """Humble's rclpy handler wakes the executor and calls ours with the context still up:
    ours must shut it down (so spin ends) instead of raising KeyboardInterrupt."""
    import rclpy

    from vla_policy_node.nodes.runner import _SignalState

    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    try:
        state = _SignalState()
        state.starting = False
        assert rclpy.ok()
        state.handler(signal.SIGINT, None)  # no KeyboardInterrupt
        assert not rclpy.ok() and state.received == signal.SIGINT
        state.handler(signal.SIGINT, None)  # a second one: nothing happens
    finally:
        rclpy.try_shutdown()


def test_a_signal_while_starting_interrupts_the_start():
    from vla_policy_node.nodes.runner import _SignalState
    state = _SignalState()
    with pytest.raises(KeyboardInterrupt):
        state.handler(signal.SIGINT, None)
