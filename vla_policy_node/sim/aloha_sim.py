"""A simulated bimanual ALOHA: gym-aloha's MuJoCo scenes driven directly, without gymnasium.

Why not ``gym_aloha.AlohaEnv``: as shipped it renders three 480x640 cameras on every step
(about 5 steps/s on a CPU). Here the MuJoCo model is stepped directly, only the cameras that are
asked for are rendered, at the configured resolution, with shadows and reflections off.

Units (the ALOHA 14-vector, see ``config/aloha.yaml``): ``[left 6 joints (rad), left gripper
(normalized, 0 closed .. 1 open), right 6 joints, right gripper]``. The simulated fingers are
slide joints (metres); ``SimConfig.finger_open_position`` / ``finger_close_position`` map them to
the normalized gripper, and :class:`~vla_policy_node.config.RobotConfig`'s gripper calibration maps
that to the driver's ``gripper`` joint (radians), so the published joint states look like a real
Interbotix follower.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vla_policy_node.config import RobotConfig

# MuJoCo picks its GL backend at import time: headless machines need EGL (or OSMesa).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco  # noqa: E402
from gym_aloha.constants import ASSETS_DIR, START_ARM_POSE  # noqa: E402
from gym_aloha.utils import sample_box_pose, sample_insertion_pose  # noqa: E402

logger = logging.getLogger(__name__)

TASKS = ("transfer_cube", "insertion")
#: Language instruction of each task (as recorded with the scripted demonstrations).
INSTRUCTIONS = {
    "transfer_cube": "transfer the red cube to the other arm",
    "insertion": "insert the peg into the socket",
}
#: Highest stage reward of both tasks (transfer done / peg touches the pin).
MAX_REWARD = 4
#: Driver joint names of one simulated arm, in vector order (the sim's names without prefix).
SIM_ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
#: MuJoCo body name prefix of each arm, in vector order (left, right).
SIM_ARMS = ("vx300s_left", "vx300s_right")
#: Free joints of each task's objects, in gym-aloha's pose order.
_OBJECT_JOINTS = {
    "transfer_cube": ("red_box_joint",),
    "insertion": ("red_peg_joint", "blue_socket_joint"),
}


class SimError(ValueError):
    """A request the simulator cannot honour (unknown task or camera, bad command...)."""


@dataclass(frozen=True)
class SimConfig:
    """Settings of :class:`AlohaSim` (the ``sim_aloha`` parameters of ``config/aloha.yaml``).

    Attributes:
        task: ``transfer_cube`` or ``insertion``.
        camera_height / camera_width: resolution of rendered images, pixels.
        control_period: simulated seconds per :meth:`AlohaSim.step` (1 / physics_rate_hz).
        finger_open_position / finger_close_position: simulated finger slide position (m) that
            normalizes to gripper 1 (open) and 0 (closed).
        shadows / reflections: render them (slow in software rendering).
    """

    task: str = "transfer_cube"
    camera_height: int = 480
    camera_width: int = 640
    control_period: float = 0.02
    finger_open_position: float = 0.057
    finger_close_position: float = 0.0224
    shadows: bool = False
    reflections: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SimError(f"unknown task {self.task!r}; expected one of {list(TASKS)}")
        for name in ("camera_height", "camera_width"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or not 8 <= value <= 4096:
                raise SimError(f"{name} must be an integer in [8, 4096], got {value!r}")
        if not (math.isfinite(self.control_period) and 0 < self.control_period <= 1.0):
            raise SimError(f"control_period must be in (0, 1] s, got {self.control_period!r}")
        if not (math.isfinite(self.finger_open_position)
                and math.isfinite(self.finger_close_position)
                and self.finger_open_position != self.finger_close_position):
            raise SimError(
                f"finger_open_position {self.finger_open_position!r} and "
                f"finger_close_position {self.finger_close_position!r} must be distinct numbers")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "SimConfig":
        """Build from the flat ``sim_aloha`` parameters (see ``config/aloha.yaml``)."""
        rate = float(params.get("physics_rate_hz", 50.0))
        if not (math.isfinite(rate) and rate > 0):
            raise SimError(f"physics_rate_hz must be > 0, got {rate!r}")
        defaults = cls()
        return cls(
            task=str(params.get("task", defaults.task)),
            camera_height=int(params.get("camera_height", defaults.camera_height)),
            camera_width=int(params.get("camera_width", defaults.camera_width)),
            control_period=1.0 / rate,
            finger_open_position=float(params.get(
                "sim.finger_open_position", defaults.finger_open_position)),
            finger_close_position=float(params.get(
                "sim.finger_close_position", defaults.finger_close_position)),
            shadows=bool(params.get("sim.shadows", defaults.shadows)),
            reflections=bool(params.get("sim.reflections", defaults.reflections)),
        )


def model_path(task: str, mocap: bool = False) -> str:
    """gym-aloha scene of ``task``: joint position control, or end-effector (mocap) control."""
    if task not in TASKS:
        raise SimError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    prefix = "bimanual_viperx_end_effector_" if mocap else "bimanual_viperx_"
    return str(ASSETS_DIR / f"{prefix}{task}.xml")


def sample_object_poses(task: str, seed: int | None) -> np.ndarray:
    """Initial object poses of an episode, as gym-aloha samples them for ``seed``.

    Returns:
        (7 * n_objects,) concatenated ``[x, y, z, qw, qx, qy, qz]`` poses.
    """
    if task == "transfer_cube":
        return np.asarray(sample_box_pose(seed), dtype=np.float64)
    if task == "insertion":
        return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)
    raise SimError(f"unknown task {task!r}; expected one of {list(TASKS)}")


class AlohaSim:
    """Bimanual ALOHA in MuJoCo, stepped at the control period, with on-demand cameras.

    Not thread-safe: one thread steps, renders and resets.

    Args:
        robot: the robot description (joint vector layout, gripper calibration).
        config: simulator settings.
        mocap: load the end-effector variant (arms follow mocap bodies; only the grippers are
            actuated). Used to script demonstrations (see :mod:`vla_policy_node.sim.scripted`).
    """

    def __init__(self, robot: RobotConfig, config: SimConfig | None = None,
                 mocap: bool = False) -> None:
        if robot.dim != 14 or len(robot.arms) != 2:
            raise SimError(
                f"the simulated ALOHA needs the 14-vector of two arms; got {robot.dim} joints "
                f"for arms {list(robot.arms)}")
        groups = robot.arm_group_indices()
        for arm, group in groups.items():
            if group["gripper_index"] is None:
                raise SimError(f"arm {arm!r} has no gripper in robot.joint_names")
            if list(group["driver_joint_names"]) != list(SIM_ARM_JOINTS):
                raise SimError(
                    f"robot.arm_joint_names {group['driver_joint_names']} do not match the "
                    f"simulated vx300s joints {list(SIM_ARM_JOINTS)}")
        self.robot = robot
        self.config = config or SimConfig()
        self.mocap = mocap
        self._groups = [groups[arm] for arm in robot.arms]
        self._models: dict[str, tuple[Any, Any]] = {}
        self._renderers: dict[tuple[int, int], Any] = {}
        self.task = ""
        self.seed: int | None = None
        self.reward = 0
        self.episode_max_reward = 0
        self.steps = 0
        self._load(self.config.task)
        self.reset(self.config.task, seed=0)

    # ------------------------------------------------------------------ model
    def _load(self, task: str) -> None:
        if task not in TASKS:
            raise SimError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        if task not in self._models:
            model = mujoco.MjModel.from_xml_path(model_path(task, self.mocap))
            if not self.config.shadows:
                model.light_castshadow[:] = 0
            if not self.config.reflections:
                model.mat_reflectance[:] = 0
            if self.mocap:
                # gym-aloha's welds are soft (solimp .25): against the joints' friction the
                # grippers lag their mocap targets by centimetres and tens of degrees. The
                # mocap variant only plans trajectories, so make them stiff.
                model.eq_solimp[:] = (0.95, 0.99, 0.001, 0.5, 2.0)
                model.eq_solref[:] = (0.01, 1.0)
            self._models[task] = (model, mujoco.MjData(model))
        if task != self.task:
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers.clear()
        self.model, self.data = self._models[task]
        self.task = task
        self._index_model()

    def _index_model(self) -> None:
        m = self.model
        substeps = self.config.control_period / m.opt.timestep
        self.n_substeps = max(1, int(round(substeps)))
        if abs(substeps - self.n_substeps) > 1e-6:
            logger.warning("control period %.4f s is not a multiple of the physics timestep "
                           "%.4f s; stepping %d substeps", self.config.control_period,
                           m.opt.timestep, self.n_substeps)

        def joint(name: str) -> int:
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise SimError(f"joint {name!r} not in the {self.task} model")
            return jid

        self._arm_qpos: list[np.ndarray] = []
        self._arm_qvel: list[np.ndarray] = []
        self._finger_qpos: list[tuple[int, int]] = []
        self._finger_qvel: list[int] = []
        for arm in SIM_ARMS:
            ids = [joint(f"{arm}/{name}") for name in SIM_ARM_JOINTS]
            self._arm_qpos.append(np.array([m.jnt_qposadr[j] for j in ids]))
            self._arm_qvel.append(np.array([m.jnt_dofadr[j] for j in ids]))
            left, right = joint(f"{arm}/left_finger"), joint(f"{arm}/right_finger")
            self._finger_qpos.append((int(m.jnt_qposadr[left]), int(m.jnt_qposadr[right])))
            self._finger_qvel.append(int(m.jnt_dofadr[left]))
        # Actuators by the joint they drive: the joint model drives 16, the mocap model only
        # the 4 fingers.
        by_joint = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
        self._arm_ctrl: list[np.ndarray | None] = []
        self._finger_ctrl: list[tuple[int, int]] = []
        for arm in SIM_ARMS:
            ids = [joint(f"{arm}/{name}") for name in SIM_ARM_JOINTS]
            self._arm_ctrl.append(None if self.mocap else np.array([by_joint[j] for j in ids]))
            self._finger_ctrl.append((by_joint[joint(f"{arm}/left_finger")],
                                      by_joint[joint(f"{arm}/right_finger")]))
        self._object_qpos = [int(m.jnt_qposadr[joint(name)]) for name in _OBJECT_JOINTS[self.task]]
        self._gripper_bodies = [
            mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"{arm}/gripper_link")
            for arm in SIM_ARMS]
        self._camera_ids = {m.camera(i).name: i for i in range(m.ncam)}
        # Mocap variant: each gripper link is welded to a mocap body with a relative pose
        # (MuJoCo takes it from qpos0); keep it to turn gripper targets into mocap poses.
        self._weld: list[tuple[int, np.ndarray, np.ndarray]] = []
        if self.mocap:
            for body in self._gripper_bodies:
                rows = [e for e in range(m.neq) if m.eq_type[e] == mujoco.mjtEq.mjEQ_WELD
                        and body in (m.eq_obj1id[e], m.eq_obj2id[e])]
                if len(rows) != 1:
                    raise SimError(f"gripper body {body} has {len(rows)} welds, expected 1")
                e = rows[0]
                mocap_body = m.eq_obj1id[e] if m.eq_obj2id[e] == body else m.eq_obj2id[e]
                if m.eq_obj2id[e] != body:
                    raise SimError("mocap weld must name the gripper as body2")
                self._weld.append((int(m.body_mocapid[mocap_body]),
                                   m.eq_data[e, 3:6].copy(), m.eq_data[e, 6:10].copy()))

        def geom(name: str) -> int:
            gid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, name)
            if gid < 0:
                raise SimError(f"geom {name!r} not in the {self.task} model")
            return gid

        self._finger_geoms = [(geom(f"{arm}/10_left_gripper_finger"),
                               geom(f"{arm}/10_right_gripper_finger")) for arm in SIM_ARMS]
        self._geom = {name: geom(name) for name in (
            "table", "vx300s_left/10_left_gripper_finger", "vx300s_right/10_right_gripper_finger")}
        if self.task == "transfer_cube":
            self._geom["red_box"] = geom("red_box")
        else:
            for name in ("red_peg", "pin", "socket-1", "socket-2", "socket-3", "socket-4"):
                self._geom[name] = geom(name)

    # ------------------------------------------------------------------ episode
    @property
    def cameras(self) -> tuple[str, ...]:
        """Names of the model's cameras (``top``, ``left_wrist``, ``right_wrist``...)."""
        return tuple(self._camera_ids)

    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return float(self.data.time)

    @property
    def success(self) -> bool:
        """The task reached its highest reward at some step of this episode."""
        return self.episode_max_reward >= MAX_REWARD

    def reset(self, task: str | None = None, seed: int | None = None) -> None:
        """Start an episode: arms at the ALOHA start pose, objects sampled from ``seed``.

        Args:
            task: switch task (``transfer_cube`` / ``insertion``); None keeps the current one.
            seed: object placement seed (gym-aloha's sampling); None draws a random one.
        """
        task = self.task if task is None else task
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise SimError(f"seed must be a non-negative integer or None, got {seed!r}")
        self._load(task)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:16] = START_ARM_POSE
        poses = sample_object_poses(task, seed)
        for k, adr in enumerate(self._object_qpos):
            d.qpos[adr:adr + 7] = poses[7 * k:7 * k + 7]
        self.seed = None if seed is None else int(seed)
        if self.mocap:
            mujoco.mj_forward(m, d)
            self._set_gripper_targets(self.gripper_poses())
        start = self.joint_positions()
        self._target = start.copy()
        self._apply_target(start)
        mujoco.mj_forward(m, d)
        self.steps = 0
        self.reward = self._compute_reward()
        self.episode_max_reward = self.reward

    # ------------------------------------------------------------------ control
    def validate_target(self, target: Iterable[float]) -> np.ndarray:
        """Check a 14-vector command; returns it as float64.

        Raises:
            SimError: wrong length or a non-finite entry (named).
        """
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.robot.dim,):
            raise SimError(f"target must have shape ({self.robot.dim},), got {target.shape}")
        bad = np.flatnonzero(~np.isfinite(target))
        if bad.size:
            raise SimError(f"non-finite target for {self.robot.joint_names[bad[0]]!r}: "
                           f"{target[bad[0]]}")
        return target

    def _apply_target(self, target: np.ndarray) -> None:
        ctrl = self.data.ctrl
        for k, group in enumerate(self._groups):
            if self._arm_ctrl[k] is not None:
                ctrl[self._arm_ctrl[k]] = target[group["joint_indices"]]
            finger = self.normalized_to_finger(target[group["gripper_index"]])
            left, right = self._finger_ctrl[k]
            ctrl[left], ctrl[right] = finger, -finger
        # Position actuators clamp to their ctrlrange (the joint limits) like a servo would.
        np.clip(ctrl, self.model.actuator_ctrlrange[:, 0], self.model.actuator_ctrlrange[:, 1],
                out=ctrl)

    def step(self, target: Iterable[float] | None = None,
             mocap_poses: np.ndarray | None = None) -> int:
        """Advance one control period towards ``target`` (position-actuator set points).

        Args:
            target: (14,) ALOHA vector (radians, normalized grippers); None keeps the last one.
                In the mocap variant only the grippers of ``target`` are used.
            mocap_poses: (2, 7) ``[x, y, z, qw, qx, qy, qz]`` of the left and right mocap
                bodies (mocap variant only). Each is welded to its gripper link at a fixed
                offset: a tool point between the fingertips, about 0.135 m ahead of the link.

        Returns:
            The task's stage reward after the step (0..4).
        """
        if target is not None:
            self._target = self.validate_target(target)
        if mocap_poses is not None:
            if not self.mocap:
                raise SimError("mocap_poses given to a joint-controlled sim (mocap=False)")
            poses = np.asarray(mocap_poses, dtype=np.float64)
            if poses.shape != (2, 7) or not np.all(np.isfinite(poses)):
                raise SimError(f"mocap_poses must be a finite (2, 7) array, got {poses!r}")
            for (mocap_id, _, _), pose in zip(self._weld, poses):
                self.data.mocap_pos[mocap_id] = pose[:3]
                self.data.mocap_quat[mocap_id] = pose[3:] / np.linalg.norm(pose[3:])
        self._apply_target(self._target)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.steps += 1
        self.reward = self._compute_reward()
        self.episode_max_reward = max(self.episode_max_reward, self.reward)
        return self.reward

    def _set_gripper_targets(self, poses: np.ndarray) -> None:
        """Place the mocap bodies so that the welded gripper links sit at ``poses`` (2, 7)."""
        for (mocap_id, rel_pos, rel_quat), pose in zip(self._weld, poses):
            # gripper = mocap * rel  =>  mocap = gripper * rel^-1
            quat = pose[3:] / np.linalg.norm(pose[3:])
            inv_rel = np.empty(4)
            mujoco.mju_negQuat(inv_rel, rel_quat)
            mocap_quat = np.empty(4)
            mujoco.mju_mulQuat(mocap_quat, quat, inv_rel)
            offset = np.empty(3)
            mujoco.mju_rotVecQuat(offset, rel_pos, mocap_quat)
            self.data.mocap_pos[mocap_id] = pose[:3] - offset
            self.data.mocap_quat[mocap_id] = mocap_quat

    def mocap_poses(self) -> np.ndarray:
        """(2, 7) current ``[x, y, z, qw, qx, qy, qz]`` of the mocap bodies (mocap variant)."""
        if not self.mocap:
            raise SimError("mocap_poses of a joint-controlled sim (mocap=False)")
        return np.stack([np.concatenate([self.data.mocap_pos[i], self.data.mocap_quat[i]])
                         for i, _, _ in self._weld])

    @property
    def target(self) -> np.ndarray:
        """(14,) the set point the actuators currently track (copy)."""
        return self._target.copy()

    # ------------------------------------------------------------------ state
    def finger_to_normalized(self, finger: float | np.ndarray) -> float | np.ndarray:
        """Simulated finger slide position (m) -> normalized gripper (0 closed, 1 open)."""
        c = self.config
        return (finger - c.finger_close_position) / (
            c.finger_open_position - c.finger_close_position)

    def normalized_to_finger(self, normalized: float | np.ndarray) -> float | np.ndarray:
        """Normalized gripper (0 closed, 1 open) -> simulated finger slide position (m)."""
        c = self.config
        return c.finger_close_position + normalized * (
            c.finger_open_position - c.finger_close_position)

    def joint_positions(self) -> np.ndarray:
        """(14,) current ALOHA vector: joint radians, grippers normalized."""
        q = np.empty(self.robot.dim)
        for k, group in enumerate(self._groups):
            q[group["joint_indices"]] = self.data.qpos[self._arm_qpos[k]]
            q[group["gripper_index"]] = self.finger_to_normalized(
                self.data.qpos[self._finger_qpos[k][0]])
        return q

    def joint_velocities(self) -> np.ndarray:
        """(14,) joint velocities (rad/s; grippers in normalized units/s)."""
        v = np.empty(self.robot.dim)
        scale = self.config.finger_open_position - self.config.finger_close_position
        for k, group in enumerate(self._groups):
            v[group["joint_indices"]] = self.data.qvel[self._arm_qvel[k]]
            v[group["gripper_index"]] = self.data.qvel[self._finger_qvel[k]] / scale
        return v

    def driver_joint_states(self) -> list[dict[str, Any]]:
        """Per arm (``robot.arms`` order), what the Interbotix driver would publish.

        Returns:
            ``[{"arm", "name", "position", "velocity", "effort"}]`` with names
            ``waist..wrist_rotate, gripper, left_finger, right_finger``; arm joints and the
            ``gripper`` joint in radians (``robot.gripper_*_position`` calibration), fingers in
            metres; effort is MuJoCo's actuator force (N m / N), not the servos' current.
        """
        robot = self.robot
        span = robot.gripper_open_position - robot.gripper_close_position
        scale = self.config.finger_open_position - self.config.finger_close_position
        q = self.joint_positions()
        states = []
        for k, (arm, group) in enumerate(zip(robot.arms, self._groups)):
            gi = group["gripper_index"]
            left, right = self._finger_qpos[k]
            finger_v = float(self.data.qvel[self._finger_qvel[k]])
            position = np.concatenate([
                q[group["joint_indices"]],
                [robot.unnormalize_gripper(q[gi]), self.data.qpos[left], self.data.qpos[right]]])
            velocity = np.concatenate([
                self.data.qvel[self._arm_qvel[k]],
                [finger_v / scale * span, finger_v, -finger_v]])
            effort = np.concatenate([
                self.data.qfrc_actuator[self._arm_qvel[k]],
                [self.data.qfrc_actuator[self._finger_qvel[k]]] * 3])
            states.append({
                "arm": arm,
                "name": [*robot.arm_joint_names, robot.gripper_joint_name,
                         "left_finger", "right_finger"],
                "position": position,
                "velocity": velocity,
                "effort": effort,
            })
        return states

    def object_poses(self) -> np.ndarray:
        """(n_objects, 7) current ``[x, y, z, qw, qx, qy, qz]`` of the task's objects."""
        return np.stack([self.data.qpos[a:a + 7] for a in self._object_qpos]).copy()

    def gripper_poses(self) -> np.ndarray:
        """(2, 7) current ``[x, y, z, qw, qx, qy, qz]`` of both gripper links (left, right)."""
        return np.stack([np.concatenate([self.data.xpos[b], self.data.xquat[b]])
                         for b in self._gripper_bodies])

    def fingertip_points(self) -> np.ndarray:
        """(2, 3) midpoint between the two fingers of the left and right gripper (m): where a
        grasped object sits."""
        return np.stack([(self.data.geom_xpos[a] + self.data.geom_xpos[b]) / 2
                         for a, b in self._finger_geoms])

    # ------------------------------------------------------------------ reward
    def _compute_reward(self) -> int:
        """Stage reward (0..4) from the current contacts, as gym-aloha defines the tasks."""
        g = self._geom
        pairs = set()
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            pairs.add((min(c.geom1, c.geom2), max(c.geom1, c.geom2)))

        def touch(a: str, b: str) -> bool:
            x, y = g[a], g[b]
            return (min(x, y), max(x, y)) in pairs

        left_finger, right_finger = ("vx300s_left/10_left_gripper_finger",
                                     "vx300s_right/10_right_gripper_finger")
        if self.task == "transfer_cube":
            on_table = touch("red_box", "table")
            reward = 0
            if touch("red_box", right_finger):
                reward = 1 if on_table else 2
            if touch("red_box", left_finger):
                reward = 3 if on_table else 4
            return reward
        sockets = ("socket-1", "socket-2", "socket-3", "socket-4")
        left_holds = any(touch(s, left_finger) for s in sockets)
        right_holds = touch("red_peg", right_finger)
        lifted = not touch("red_peg", "table") and not any(touch(s, "table") for s in sockets)
        reward = 0
        if left_holds and right_holds:
            reward = 2 if lifted else 1
        if lifted and any(touch("red_peg", s) for s in sockets):
            reward = 3
        if touch("red_peg", "pin"):
            reward = 4
        return reward

    # ------------------------------------------------------------------ cameras
    def render(self, cameras: Sequence[str], height: int | None = None,
               width: int | None = None) -> dict[str, np.ndarray]:
        """Render the named MuJoCo cameras of the current state.

        Args:
            cameras: model camera names (``top``, ``left_wrist``, ``right_wrist``, ``angle``...).
            height / width: resolution; default the configured one.

        Returns:
            ``{camera: (H, W, 3) uint8 RGB}`` (fresh arrays, safe to keep).
        """
        height = self.config.camera_height if height is None else int(height)
        width = self.config.camera_width if width is None else int(width)
        unknown = [c for c in cameras if c not in self._camera_ids]
        if unknown:
            raise SimError(f"unknown camera(s) {unknown}; the model has {list(self.cameras)}")
        key = (height, width)
        renderer = self._renderers.get(key)
        if renderer is None:
            # The offscreen buffer (a model attribute) must hold the image.
            vis = self.model.vis.global_
            vis.offheight, vis.offwidth = max(height, vis.offheight), max(width, vis.offwidth)
            renderer = mujoco.Renderer(self.model, height, width)
            self._renderers[key] = renderer
        images = {}
        for name in cameras:
            renderer.update_scene(self.data, camera=self._camera_ids[name])
            images[name] = renderer.render().copy()
        return images

    def close(self) -> None:
        """Release the renderers (GL contexts)."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    def __enter__(self) -> "AlohaSim":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
