"""Declaring a node's parameters in one place: name, default, description, range.

Each node lists its parameters as :class:`ParameterSpec` s and calls :func:`declare_parameters`,
which declares them with descriptors (so ``ros2 param describe`` explains them) and returns
their values. Required parameters (default ``None`` with a type) must come from the parameter
file; a missing one fails start-up with a message naming it. Optional ones (``optional=True``)
read as None when unset. Read-only parameters (limits, rates) are validated once at start and
cannot be changed at run time, so nothing bypasses that validation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
try:
    from rclpy.exceptions import ParameterUninitializedException
except ImportError:  # older rclpy: a typed parameter without a value reads as NOT_SET instead
    class ParameterUninitializedException(Exception):  # type: ignore[no-redef]
        """Never raised by this rclpy."""
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: ``default`` None means required (or, ``optional``, None), of ``type_``."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    type_: Parameter.Type | None = None
    read_only: bool = False
    optional: bool = False


def declare_parameters(node: Node, specs: tuple[ParameterSpec, ...]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` and return ``{name: value}``.

    Raises:
        ValueError: a required parameter is not set (names it and the config file to pass).
    """
    values: dict[str, Any] = {}
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.description,
                                         read_only=spec.read_only)
        if spec.range is not None:
            low, high = spec.range
            if isinstance(spec.default, int) and not isinstance(spec.default, bool):
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                         step=1)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(low), to_value=float(high), step=0.0)]
        if spec.default is None:
            # Writable until we know it has a value: an optional parameter left without one
            # is undeclared below, which a read-only one cannot be.
            node.declare_parameter(spec.name, spec.type_,
                                   replace_descriptor(descriptor, read_only=False))
        else:
            node.declare_parameter(spec.name, spec.default, descriptor)
        try:
            parameter = node.get_parameter(spec.name)
            unset = parameter.type_ == Parameter.Type.NOT_SET
        except ParameterUninitializedException:  # Jazzy: typed, declared without a value
            unset = True
        if unset:
            if spec.optional:
                # A declared parameter without a value makes rclpy's GetParameters answer
                # nothing for the whole batch (`ros2 param dump` printed {}): an unset
                # optional parameter is not declared at all.
                node.undeclare_parameter(spec.name)
                values[spec.name] = None
                continue
            raise ValueError(
                f"parameter {spec.name} is not set: start the node with --params-file "
                "config/aloha.yaml (or your copy of it)")
        if spec.default is None and spec.read_only:
            node.undeclare_parameter(spec.name)
            node.declare_parameter(spec.name, parameter.value, descriptor)
        value = parameter.value
        if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
            value = list(value)
        values[spec.name] = value
    return values


def declare_derived(node: Node, specs: tuple[ParameterSpec, ...], name: str,
                    value: Any) -> None:
    """Declare an optional parameter that was left unset with the value the node derived.

    ``ros2 param get`` and ``dump`` then show what the node actually does (e.g. the
    executor's per-arm ``output_types`` from ``output_type``), and a dump reloads into the same
    node. Does nothing when the parameter is declared (it was set).
    """
    if node.has_parameter(name):
        return
    spec = next(s for s in specs if s.name == name)
    node.declare_parameter(name, value, ParameterDescriptor(description=spec.description,
                                                            read_only=spec.read_only))


def replace_descriptor(descriptor: ParameterDescriptor, **fields: Any) -> ParameterDescriptor:
    """A copy of ``descriptor`` with ``fields`` changed."""
    copy = ParameterDescriptor()
    for name in ParameterDescriptor.get_fields_and_field_types():
        setattr(copy, name, getattr(descriptor, name))
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy


def robot_parameter_specs(read_only: bool = False) -> tuple[ParameterSpec, ...]:
    """The shared ``robot.*`` description (``/**`` section of config/aloha.yaml): required."""
    strings, doubles = Parameter.Type.STRING_ARRAY, Parameter.Type.DOUBLE_ARRAY
    specs = (
        ParameterSpec("robot.joint_names", None, "Names of the D-vector, model order.",
                      type_=strings),
        ParameterSpec("robot.arms", None, "Follower arm namespaces.", type_=strings),
        ParameterSpec("robot.arm_prefixes", None, "Vector-name prefix per arm.", type_=strings),
        ParameterSpec("robot.arm_joint_names", None, "Driver joint names of one arm.",
                      type_=strings),
        ParameterSpec("robot.gripper_joint_name", None, "Driver name of the gripper joint.",
                      type_=Parameter.Type.STRING),
        ParameterSpec("robot.gripper_open_position", None,
                      "Driver gripper position normalized to 1 (open).",
                      type_=Parameter.Type.DOUBLE),
        ParameterSpec("robot.gripper_close_position", None,
                      "Driver gripper position normalized to 0 (closed).",
                      type_=Parameter.Type.DOUBLE),
        ParameterSpec("robot.position_min", None, "Lower position limit per vector entry.",
                      type_=doubles),
        ParameterSpec("robot.position_max", None, "Upper position limit per vector entry.",
                      type_=doubles),
        ParameterSpec("robot.max_velocity", None, "Maximum command speed per entry (unit/s).",
                      type_=doubles),
        ParameterSpec("robot.joint_states_topic_suffix", "joint_states",
                      "/<arm>/<suffix> carries the arm's JointState."),
    )
    return tuple(replace(spec, read_only=read_only) for spec in specs)
