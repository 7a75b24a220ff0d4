"""The node set of the suite, described once for ``aloha.launch.py`` and ``vla-bringup``.

``ros2 launch vla_policy_node aloha.launch.py`` (ROS installs) and ``vla-bringup`` (pip installs,
where ``launch`` is not available) both call :func:`node_descriptions` with the same arguments,
so they start the same nodes with the same parameter files and overrides. No rclpy/launch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Any, Mapping

from vla_policy_node.config import default_config_path, PACKAGE_NAME

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument (``name:=value`` in ros2 launch, ``--name value`` in vla-bringup)."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("config", "", "Parameter file for every node (empty: the package's "
                   "config/aloha.yaml)."),
    LaunchArgument("checkpoint", "", "Checkpoint directory of the policy (ours or official "
                   "OpenVLA-OFT / RoboFlamingo; the family is read from it); empty: the "
                   "preset with random weights."),
    LaunchArgument("preset", "", "Model preset when no checkpoint is given (tiny, openvla-7b, "
                   "tiny-roboflamingo, ...); empty: the config's."),
    LaunchArgument("sim", "false", "Also start the simulated ALOHA (MuJoCo) and run on its "
                   "simulated clock.", ("true", "false")),
    LaunchArgument("use_sim_time", "", "Run nodes on /clock (empty: same as sim).",
                   ("", "true", "false")),
    LaunchArgument("device", "", "Inference device: cpu, cuda, cuda:N (empty: the config's)."),
    LaunchArgument("dtype", "", "Model dtype: float32, bfloat16, float16 (empty: the config's)."),
    LaunchArgument("quantization", "", "Language-model quantization (empty: the config's).",
                   ("", "none", "8bit", "4bit")),
    LaunchArgument("task", "", "Simulated task when sim:=true: transfer_cube or insertion "
                   "(empty: the config's).", ("", "transfer_cube", "insertion")),
)


@dataclass(frozen=True)
class NodeDescription:
    """One node to start.

    Attributes:
        executable: console script (``lib/vla_policy_node/<executable>``) for launch_ros.
        module: the Python module with ``main()``, for ``python -m`` in vla-bringup.
        name: the node name (``__node``).
        params_file: the parameter file (``--params-file``).
        overrides: typed parameter overrides applied after the file.
    """

    executable: str
    module: str
    name: str
    params_file: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    package: str = PACKAGE_NAME


def parse_bool(name: str, value: str) -> bool:
    """'true'/'false' (and 1/0, yes/no, on/off) -> bool; raises naming the argument."""
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"argument {name}: expected true or false, got {value!r}")


def node_descriptions(**arguments: str) -> list[NodeDescription]:
    """The nodes to start for the given launch arguments (strings, as launch passes them).

    Raises:
        ValueError: an unknown argument, a value outside its choices, a missing config file.
    """
    known = {arg.name: arg for arg in LAUNCH_ARGUMENTS}
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise ValueError(f"unknown launch arguments {unknown}; known: {sorted(known)}")
    values = {name: str(arguments.get(name, arg.default)) for name, arg in known.items()}
    for name, value in values.items():
        choices = known[name].choices
        if choices and value not in choices:
            raise ValueError(f"argument {name}: {value!r} is not one of {list(choices)}")

    config = values["config"] or str(default_config_path())
    if not Path(config).is_file():
        raise ValueError(f"argument config: file not found: {config}")
    config = os.path.abspath(config)
    sim = parse_bool("sim", values["sim"])
    use_sim_time = (parse_bool("use_sim_time", values["use_sim_time"])
                    if values["use_sim_time"] else sim)

    common = {"use_sim_time": use_sim_time}
    policy_overrides = dict(common)
    for name in ("checkpoint", "preset", "device", "dtype", "quantization"):
        if values[name]:
            policy_overrides[name] = values[name]
    nodes = [
        NodeDescription("vla_policy", "vla_policy_node.nodes.vla_policy", "vla_policy",
                        config, policy_overrides),
        NodeDescription("chunk_executor", "vla_policy_node.nodes.chunk_executor",
                        "chunk_executor", config, dict(common)),
    ]
    if sim:
        sim_overrides: dict[str, Any] = {"use_sim_time": False}  # the sim publishes /clock
        if values["task"]:
            sim_overrides["task"] = values["task"]
        nodes.insert(0, NodeDescription("sim_aloha", "vla_policy_node.nodes.sim_aloha",
                                        "sim_aloha", config, sim_overrides))
    return nodes


def ros_arguments(node: NodeDescription, overrides_file: str | None = None) -> list[str]:
    """``--ros-args`` of a node started by hand: name, parameter file, then overrides file."""
    args = ["--ros-args", "-r", f"__node:={node.name}", "--params-file", node.params_file]
    if overrides_file is not None:
        args += ["--params-file", overrides_file]
    return args


def overrides_document(node: NodeDescription) -> dict[str, Any]:
    """The ROS 2 parameter-file document of a node's overrides."""
    return {node.name: {"ros__parameters": dict(node.overrides)}}
