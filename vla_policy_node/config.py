"""Reading ``config/*.yaml`` (ROS 2 parameter files) without rclpy.

The nodes get their parameters from ROS; the core, tools and tests read the same file here, so
a single YAML file configures both (``/**`` entries apply to every node, as in ROS).
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

logger = logging.getLogger(__name__)

PACKAGE_NAME = "vla_policy_node"


def package_share_dir() -> Path:
    """Directory holding ``config/`` and ``launch/``: the source tree or the install space."""
    source_root = Path(__file__).resolve().parent.parent
    if (source_root / "config" / "aloha.yaml").is_file():
        return source_root
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE_NAME))
    except Exception as exc:  # noqa: BLE001 - any failure means "not installed"
        raise FileNotFoundError(
            f"cannot find the {PACKAGE_NAME} config directory (not in {source_root}, "
            f"and not in an ament index: {exc})") from exc


def default_config_path() -> Path:
    """``config/aloha.yaml`` of this package."""
    return package_share_dir() / "config" / "aloha.yaml"


def load_node_params(path: str | os.PathLike, node_name: str) -> dict[str, Any]:
    """Flat parameter dict of ``node_name``: the ``/**`` section overlaid by the node's own.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a ROS 2 parameter file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as f:
        document = yaml.safe_load(f) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of node names, got {type(document)}")
    params: dict[str, Any] = {}
    for section in ("/**", node_name, "/" + node_name):
        entry = document.get(section)
        if entry is None:
            continue
        if not isinstance(entry, dict) or "ros__parameters" not in entry:
            raise ValueError(f"{path}: section {section!r} has no ros__parameters")
        params.update(_flatten(entry["ros__parameters"]))
    return params


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class RobotConfig:
    """The robot description shared by all nodes (the ``robot.*`` parameters).

    Attributes:
        joint_names: the D names of the action/proprio vector, in model order.
        arms: follower arm namespaces, e.g. ``("follower_left", "follower_right")``.
        arm_prefixes: vector-name prefix per arm (``"left_"``), in ``arms`` order.
        arm_joint_names: driver joint names of one arm, without gripper.
        gripper_joint_name: driver name of the gripper joint.
        gripper_open_position / gripper_close_position: driver gripper positions that
            normalize to 1 (open) and 0 (closed).
        position_min / position_max: (D,) hard limits in vector units.
        max_velocity: (D,) maximum command speed in vector units per second.
        joint_states_topic_suffix: ``/<arm>/<suffix>`` carries the arm's JointState.
    """

    joint_names: tuple[str, ...]
    arms: tuple[str, ...]
    arm_prefixes: tuple[str, ...]
    arm_joint_names: tuple[str, ...]
    gripper_joint_name: str
    gripper_open_position: float
    gripper_close_position: float
    position_min: np.ndarray
    position_max: np.ndarray
    max_velocity: np.ndarray
    joint_states_topic_suffix: str = "joint_states"

    def __post_init__(self) -> None:
        d = len(self.joint_names)
        if d == 0:
            raise ValueError("robot.joint_names is empty")
        if len(set(self.joint_names)) != d:
            raise ValueError(f"robot.joint_names has duplicates: {list(self.joint_names)}")
        if len(self.arms) != len(self.arm_prefixes):
            raise ValueError(
                f"robot.arms {list(self.arms)} and robot.arm_prefixes "
                f"{list(self.arm_prefixes)} differ in length")
        for name in ("position_min", "position_max", "max_velocity"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.shape != (d,):
                raise ValueError(f"robot.{name} must have {d} entries, got {values.shape[0]}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"robot.{name} has non-finite entries: {values.tolist()}")
            values.setflags(write=False)
            object.__setattr__(self, name, values)
        if np.any(self.position_min >= self.position_max):
            bad = [self.joint_names[i] for i in np.flatnonzero(
                self.position_min >= self.position_max)]
            raise ValueError(f"robot.position_min >= position_max for {bad}")
        if np.any(self.max_velocity <= 0):
            raise ValueError(f"robot.max_velocity must be > 0: {self.max_velocity.tolist()}")
        if self.gripper_open_position == self.gripper_close_position:
            raise ValueError("robot.gripper_open_position equals gripper_close_position")
        expected = set(self.arm_group_indices().keys())
        if expected != set(self.arms):
            raise ValueError(f"arms without joints: {sorted(set(self.arms) - expected)}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "RobotConfig":
        """Build from a flat parameter dict (``robot.`` keys)."""
        def get(key: str) -> Any:
            try:
                return params["robot." + key]
            except KeyError:
                raise ValueError(f"missing parameter robot.{key}") from None
        return cls(
            joint_names=tuple(get("joint_names")),
            arms=tuple(get("arms")),
            arm_prefixes=tuple(get("arm_prefixes")),
            arm_joint_names=tuple(get("arm_joint_names")),
            gripper_joint_name=str(get("gripper_joint_name")),
            gripper_open_position=float(get("gripper_open_position")),
            gripper_close_position=float(get("gripper_close_position")),
            position_min=np.asarray(get("position_min"), dtype=np.float64),
            position_max=np.asarray(get("position_max"), dtype=np.float64),
            max_velocity=np.asarray(get("max_velocity"), dtype=np.float64),
            joint_states_topic_suffix=str(params.get(
                "robot.joint_states_topic_suffix", "joint_states")),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None,
                  node_name: str = "vla_policy") -> "RobotConfig":
        """Read the robot description from a parameter file (default: config/aloha.yaml)."""
        return cls.from_params(load_node_params(path or default_config_path(), node_name))

    @property
    def dim(self) -> int:
        """D, the length of the action/proprio vector."""
        return len(self.joint_names)

    def arm_group_indices(self) -> dict[str, dict[str, Any]]:
        """Per arm: vector indices of its joints and gripper, and the driver joint names.

        Returns:
            ``{arm: {"joint_indices": [...], "gripper_index": int | None,
            "driver_joint_names": [...]}}`` in ``arms`` order.
        """
        groups: dict[str, dict[str, Any]] = {}
        for arm, prefix in zip(self.arms, self.arm_prefixes):
            joint_indices = []
            for joint in self.arm_joint_names:
                name = prefix + joint
                if name not in self.joint_names:
                    raise ValueError(f"joint {name!r} of arm {arm!r} not in robot.joint_names")
                joint_indices.append(self.joint_names.index(name))
            gripper_name = prefix + self.gripper_joint_name
            gripper_index = (self.joint_names.index(gripper_name)
                             if gripper_name in self.joint_names else None)
            groups[arm] = {
                "joint_indices": joint_indices,
                "gripper_index": gripper_index,
                "driver_joint_names": list(self.arm_joint_names),
            }
        return groups

    def normalize_gripper(self, position: float | np.ndarray) -> float | np.ndarray:
        """Driver gripper position -> normalized (0 closed, 1 open)."""
        return (position - self.gripper_close_position) / (
            self.gripper_open_position - self.gripper_close_position)

    def unnormalize_gripper(self, normalized: float | np.ndarray) -> float | np.ndarray:
        """Normalized gripper (0 closed, 1 open) -> driver gripper position."""
        return self.gripper_close_position + normalized * (
            self.gripper_open_position - self.gripper_close_position)
