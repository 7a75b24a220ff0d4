"""Mapping between the D-vector and the per-arm driver view (joint states in, commands out).

ALOHA publishes one ``JointState`` per arm with driver names (waist .. wrist_rotate, gripper in
driver radians, plus finger joints we ignore) and takes one command per arm. The robot's
vector holds [left 6 joints, left gripper normalized, right 6, right gripper normalized]. The
gripper calibration (driver position <-> normalized) comes from config, never from code.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import threading
from typing import Sequence

import numpy as np

from vla_policy_node.config import RobotConfig


class JointStateError(ValueError):
    """A joint state that must not be used (unknown arm, missing joint, NaN...)."""


@dataclass(frozen=True)
class ArmCommand:
    """The command of one arm, in driver units.

    Attributes:
        arm: arm namespace (``follower_left``).
        joint_names: driver names of the arm joints (waist .. wrist_rotate).
        positions: (J,) arm joint positions, radians.
        gripper_name: driver name of the gripper joint, or None if the arm has none.
        gripper_position: driver gripper position (un-normalized), or None.
    """

    arm: str
    joint_names: tuple[str, ...]
    positions: np.ndarray
    gripper_name: str | None
    gripper_position: float | None


class ArmMapper:
    """Splits command vectors per arm and assembles measured vectors from per-arm states.

    Thread-safe: joint states arrive on subscription threads, the control loop reads them.
    """

    def __init__(self, robot: RobotConfig) -> None:
        self.robot = robot
        self._groups = robot.arm_group_indices()
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, np.ndarray]] = {}

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self._groups)

    def split(self, command: np.ndarray) -> list[ArmCommand]:
        """Per-arm driver commands of a (D,) command vector (gripper un-normalized)."""
        command = np.asarray(command, dtype=np.float64)
        if command.shape != (self.robot.dim,):
            raise ValueError(f"command must have {self.robot.dim} values, got {command.shape}")
        out = []
        for arm, group in self._groups.items():
            gi = group["gripper_index"]
            out.append(ArmCommand(
                arm=arm,
                joint_names=tuple(group["driver_joint_names"]),
                positions=command[group["joint_indices"]].copy(),
                gripper_name=self.robot.gripper_joint_name if gi is not None else None,
                gripper_position=(float(self.robot.unnormalize_gripper(command[gi]))
                                  if gi is not None else None)))
        return out

    def update(self, arm: str, names: Sequence[str], positions: Sequence[float],
               stamp: float) -> None:
        """Record the joint state of ``arm`` measured at ``stamp`` (header stamp, seconds).

        Raises:
            JointStateError: unknown arm, names/positions of different lengths, a needed joint
                missing, or a needed value not finite. Nothing is recorded then.
        """
        group = self._groups.get(arm)
        if group is None:
            raise JointStateError(f"joint state for unknown arm {arm!r}; arms: {self.arms}")
        names = list(names)
        positions = list(positions)
        if len(names) != len(positions):
            raise JointStateError(
                f"{arm}: {len(names)} joint names but {len(positions)} positions")
        lookup = dict(zip(names, positions))
        needed = list(group["driver_joint_names"])
        if group["gripper_index"] is not None:
            needed.append(self.robot.gripper_joint_name)
        missing = [n for n in needed if n not in lookup]
        if missing:
            raise JointStateError(f"{arm}: joint state lacks {missing} (has {names})")
        values = np.array([lookup[n] for n in needed], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            bad = {n: lookup[n] for n, v in zip(needed, values) if not math.isfinite(v)}
            raise JointStateError(f"{arm}: non-finite joint positions {bad}")
        if group["gripper_index"] is not None:
            values[-1] = self.robot.normalize_gripper(values[-1])
        with self._lock:
            self._latest[arm] = (float(stamp), values)

    def clear(self) -> None:
        """Forget every recorded joint state (the arms may have been moved since)."""
        with self._lock:
            self._latest.clear()

    def measured(self, now: float, timeout: float,
                 future: float | None = None) -> np.ndarray | None:
        """(D,) measured vector if every arm's state is stamped within [now - ``timeout``,
        now + ``future``] (``future`` defaults to ``timeout``)."""
        future = timeout if future is None else future
        vector = np.full(self.robot.dim, np.nan)
        with self._lock:
            for arm, group in self._groups.items():
                entry = self._latest.get(arm)
                if entry is None or not (now - timeout <= entry[0] <= now + future):
                    return None
                values = entry[1]
                vector[group["joint_indices"]] = values[:len(group["joint_indices"])]
                if group["gripper_index"] is not None:
                    vector[group["gripper_index"]] = values[-1]
        if not np.all(np.isfinite(vector)):
            # Vector entries that no arm provides: cannot start from a measured pose.
            return None
        return vector

    def missing_arms(self, now: float, timeout: float,
                     future: float | None = None) -> list[str]:
        """Arms without a joint state stamped within [now - ``timeout``, now + ``future``]."""
        future = timeout if future is None else future
        with self._lock:
            return [arm for arm in self._groups
                    if arm not in self._latest
                    or not (now - timeout <= self._latest[arm][0] <= now + future)]
