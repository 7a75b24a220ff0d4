"""Scripted demonstrations of the simulated ALOHA tasks, generated the way ACT generated theirs.

1. In the end-effector (mocap) variant of the task, both grippers follow hand-written waypoints
   (tool-point position, orientation, gripper opening) placed relative to the sampled objects,
   linearly interpolated at the 50 Hz control rate.
2. The joint positions the arms took are recorded as a joint trajectory, with the grippers'
   commanded opening in place of their measured one.
3. The joint trajectory is replayed in the joint-controlled variant (same object placement):
   this is the demonstration, with the same observations and commands a real ALOHA would give.

``run_scripted_episode`` yields the replay step by step (time-stamped observations and
commands), for the bag writer and for the ROS graph. ``python -m vla_policy_node.sim.scripted``
reports the scripted success rate over seeds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import json
import logging
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from vla_policy_node.config import RobotConfig, default_config_path, load_node_params
from vla_policy_node.sim.aloha_sim import (
    AlohaSim, INSTRUCTIONS, SimConfig, SimError, TASKS)

logger = logging.getLogger(__name__)

#: Steps of 1/50 s per scripted episode (ACT: 400 for both tasks).
EPISODE_STEPS = {"transfer_cube": 400, "insertion": 400}

#: Seed convention: training demonstrations use object-placement seeds below
#: ``DEMO_SEED_LIMIT`` (vla-sim-demos starts at 0), evaluation starts at ``EVAL_SEED_START``
#: (vla-eval's default), so held-out episodes never place the objects as a demonstration did.
DEMO_SEED_LIMIT = 100_000
EVAL_SEED_START = 1_000_000


@dataclass(frozen=True)
class Waypoint:
    """One key pose of a gripper: reached at step ``t`` by linear interpolation.

    Attributes:
        t: control step (0 = episode start).
        xyz: (3,) tool-point position in the world, metres.
        quat: (4,) ``[w, x, y, z]`` tool orientation.
        gripper: normalized opening (0 closed, 1 open).
    """

    t: int
    xyz: np.ndarray
    quat: np.ndarray
    gripper: float


def quat_about(axis: Sequence[float], degrees: float) -> np.ndarray:
    """(4,) ``[w, x, y, z]`` rotation of ``degrees`` about the unit ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = np.radians(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * axis])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of ``[w, x, y, z]`` quaternions."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw])


def interpolate(waypoints: Sequence[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Pose and gripper at step ``t``: linear between the surrounding waypoints.

    Returns:
        xyz (3,), quat (4,) unit, gripper opening.
    """
    if t <= waypoints[0].t:
        w = waypoints[0]
        return w.xyz.copy(), w.quat / np.linalg.norm(w.quat), w.gripper
    for a, b in zip(waypoints[:-1], waypoints[1:]):
        if t <= b.t:
            f = (t - a.t) / (b.t - a.t)
            quat_b = b.quat if np.dot(a.quat, b.quat) >= 0 else -b.quat
            quat = (1 - f) * a.quat + f * quat_b
            return ((1 - f) * a.xyz + f * b.xyz, quat / np.linalg.norm(quat),
                    (1 - f) * a.gripper + f * b.gripper)
    w = waypoints[-1]
    return w.xyz.copy(), w.quat / np.linalg.norm(w.quat), w.gripper


def _wp(t: int, xyz: Sequence[float], quat: np.ndarray, gripper: float) -> Waypoint:
    return Waypoint(t, np.asarray(xyz, dtype=np.float64), np.asarray(quat, dtype=np.float64),
                    float(gripper))


def transfer_cube_waypoints(box_pose: np.ndarray, start: np.ndarray,
                            steps: int) -> tuple[list[Waypoint], list[Waypoint]]:
    """Right arm picks the cube and lifts it to the middle; the left arm takes it over.

    Args:
        box_pose: (7,) cube pose.
        start: (2, 7) mocap poses at the start (left, right).
        steps: episode length in control steps.
    """
    box = box_pose[:3]
    meet = np.array([0.0, 0.5, 0.25])
    pick_right = quat_mul(start[1, 3:], quat_about([0, 1, 0], -60))
    # The left gripper comes in level, rolled 90 degrees: its fingers close on the cube's top and
    # bottom while the right fingers hold its sides.
    meet_left = quat_about([1, 0, 0], 90)
    left = [
        _wp(0, start[0, :3], start[0, 3:], 0),
        _wp(100, meet + [-0.1, 0, -0.02], meet_left, 1),      # approach the meeting point
        _wp(260, meet + [0.02, 0, -0.02], meet_left, 1),      # reach around the cube
        _wp(310, meet + [0.02, 0, -0.02], meet_left, 0),      # close on it
        _wp(360, meet + [-0.1, 0, -0.02], meet_left, 0),      # pull it away
        _wp(steps, meet + [-0.1, 0, -0.02], meet_left, 0),
    ]
    right = [
        _wp(0, start[1, :3], start[1, 3:], 0),
        _wp(90, box + [0, 0, 0.08], pick_right, 1),           # above the cube
        _wp(130, box + [0, 0, -0.015], pick_right, 1),        # down around it
        _wp(170, box + [0, 0, -0.015], pick_right, 0),        # grasp
        _wp(200, meet + [0.05, 0, 0], pick_right, 0),         # lift towards the middle
        _wp(220, meet, pick_right, 0),
        _wp(310, meet, pick_right, 1),                        # let go once the left holds it
        _wp(360, meet + [0.1, 0, 0], pick_right, 1),          # retreat
        _wp(steps, meet + [0.1, 0, 0], pick_right, 1),
    ]
    return left, right


def insertion_waypoints(peg_pose: np.ndarray, socket_pose: np.ndarray, start: np.ndarray,
                        steps: int, held_offsets: np.ndarray | None = None
                        ) -> tuple[list[Waypoint], list[Waypoint]]:
    """Left arm grasps the socket, right arm the peg; both meet and push the peg in.

    Args:
        peg_pose / socket_pose: (7,) object poses.
        start: (2, 7) mocap poses at the start (left, right).
        steps: episode length in control steps.
        held_offsets: (2, 3) position of the socket (row 0) and peg (row 1) relative to their
            gripper's tool point once grasped; None assumes they sit where the tool grasped
            them. :func:`plan_joint_trajectory` measures them after the lift and replans, so
            the peg meets the hole wherever each object ended up in its gripper.
    """
    peg, socket = peg_pose[:3], socket_pose[:3]
    grasp_depth = np.array([0.0, 0.0, -0.03])
    if held_offsets is None:
        held_offsets = np.stack([-grasp_depth, -grasp_depth])
    # Where the objects meet: the socket's centre, and the peg's centre along the socket's
    # axis (+x). Peg and socket are 0.12 m long, the pin 0.08 m: the peg touches the pin when
    # its centre is 0.10 m from the socket's.
    socket_meet = np.array([-0.05, 0.5, 0.15])
    peg_aligned = socket_meet + [0.2, 0.0, 0.0]
    peg_inserted = socket_meet + [0.095, 0.0, 0.0]
    pick_left = quat_mul(start[0, 3:], quat_about([0, 1, 0], 60))
    pick_right = quat_mul(start[1, 3:], quat_about([0, 1, 0], -60))
    left_meet = socket_meet - held_offsets[0]
    left = [
        _wp(0, start[0, :3], start[0, 3:], 0),
        _wp(120, socket + [0, 0, 0.08], pick_left, 1),        # above the socket
        _wp(170, socket + grasp_depth, pick_left, 1),         # down around it
        _wp(220, socket + grasp_depth, pick_left, 0),         # grasp
        _wp(290, left_meet, pick_left, 0),                    # bring it to the middle
        _wp(steps, left_meet, pick_left, 0),
    ]
    right = [
        _wp(0, start[1, :3], start[1, 3:], 0),
        _wp(120, peg + [0, 0, 0.08], pick_right, 1),
        _wp(170, peg + grasp_depth, pick_right, 1),
        _wp(220, peg + grasp_depth, pick_right, 0),
        _wp(290, peg_aligned - held_offsets[1], pick_right, 0),   # in line with the hole
        _wp(350, peg_inserted - held_offsets[1], pick_right, 0),  # push it in
        _wp(steps, peg_inserted - held_offsets[1], pick_right, 0),
    ]
    return left, right


#: Control step after the insertion grasp at which the held objects are measured.
INSERTION_REPLAN_STEP = 250


def _replanned(old: list[Waypoint], new: list[Waypoint], t: int) -> list[Waypoint]:
    """``old`` up to step ``t`` (plus its pose at ``t``), then ``new`` after it."""
    xyz, quat, gripper = interpolate(old, t)
    return ([w for w in old if w.t < t] + [Waypoint(t, xyz, quat, gripper)]
            + [w for w in new if w.t > t])


#: Joint-space spring (N m/rad) pulling the forearm roll towards 0 while the mocap welds drive
#: the arms near the wrist singularity. The ViperX wrist is roll-pitch-roll: where the wrist
#: angle passes 0 only the sum of forearm roll and wrist rotate is fixed by the gripper pose,
#: and without a preference the arm left that singularity either way, with the rolls near 0 or
#: near +-pi (the "flipped" wrist, wrist angle negated): 23 of 50 transfer_cube demonstrations
#: came out flipped. One pose in several joint-space forms is what an L1 head averages into
#: nonsense. The spring picks the solution nearest the home pose; it fades out linearly by
#: |wrist angle| = the task's band, where the welds alone fix the joints. Measured over seeds
#: 0-49: a spring everywhere (or stiffer) made insertion grasps miss, which happen with the
#: wrist angle at 0.1-0.2; band 0.25 leaves 2 transfer_cube seeds flipped, 0.4 none; insertion
#: replays succeed 48/50 at 0.25 (46/50 at 0.4), with no flip either way.
WRIST_ROLL_STIFFNESS = 10.0
WRIST_SINGULAR_BAND = {"transfer_cube": 0.4, "insertion": 0.25}


def _hold_wrist_rolls(sim: AlohaSim, stiffness: float, band: float) -> None:
    """Apply the forearm-roll spring for the next step (a generalized force on the joint)."""
    import mujoco
    model, data = sim.model, sim.data
    for arm in ("vx300s_left", "vx300s_right"):
        roll, pitch = (mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"{arm}/{name}")
                       for name in ("forearm_roll", "wrist_angle"))
        near = max(0.0, 1.0 - abs(data.qpos[model.jnt_qposadr[pitch]]) / band)
        data.qfrc_applied[model.jnt_dofadr[roll]] = (
            -stiffness * near * data.qpos[model.jnt_qposadr[roll]])


@dataclass
class JointTrajectory:
    """A scripted demonstration as joint targets, ready to replay.

    Attributes:
        task / seed: what it was generated for (the seed fixes the object placement).
        actions: (T, 14) ALOHA vector targets, one per control step.
        ee_reward: the highest reward the end-effector rollout reached.
        reference: (T, 14) the joint positions the end-effector rollout reached after each step
            (what the replay should reproduce; see :func:`tune_replay`).
    """

    task: str
    seed: int
    actions: np.ndarray
    ee_reward: int
    reference: np.ndarray | None = None


def plan_joint_trajectory(robot: RobotConfig, task: str, seed: int,
                          config: SimConfig | None = None,
                          steps: int | None = None) -> JointTrajectory:
    """Roll the waypoint script out in the mocap variant and record the joint trajectory."""
    if task not in TASKS:
        raise SimError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    steps = EPISODE_STEPS[task] if steps is None else int(steps)
    if steps < 10:
        raise SimError(f"steps must be >= 10, got {steps}")
    config = config or SimConfig(task=task)
    sim = AlohaSim(robot, SimConfig(**{**config.__dict__, "task": task}), mocap=True)
    try:
        sim.reset(task, seed=seed)
        start = sim.mocap_poses()
        objects = sim.object_poses()
        if task == "transfer_cube":
            left, right = transfer_cube_waypoints(objects[0], start, steps)
        else:
            left, right = insertion_waypoints(objects[0], objects[1], start, steps)
        groups = [robot.arm_group_indices()[arm] for arm in robot.arms]
        actions = np.empty((steps, robot.dim))
        target = sim.target
        for t in range(steps):
            if task == "insertion" and t == INSERTION_REPLAN_STEP:
                held = sim.object_poses()[::-1, :3] - sim.mocap_poses()[:, :3]
                new_left, new_right = insertion_waypoints(
                    objects[0], objects[1], start, steps, held_offsets=held)
                left, right = (_replanned(left, new_left, t), _replanned(right, new_right, t))
            poses = np.empty((2, 7))
            for k, waypoints in enumerate((left, right)):
                xyz, quat, gripper = interpolate(waypoints, t + 1)
                poses[k, :3], poses[k, 3:] = xyz, quat
                target[groups[k]["gripper_index"]] = gripper
            _hold_wrist_rolls(sim, WRIST_ROLL_STIFFNESS, WRIST_SINGULAR_BAND[task])
            sim.step(target, mocap_poses=poses)
            # The arms' reached joints become the targets; the grippers keep their commands
            # (a blocked gripper must keep squeezing in the replay).
            actions[t] = sim.joint_positions()
            for k in range(2):
                gi = groups[k]["gripper_index"]
                actions[t, gi] = target[gi]
        return JointTrajectory(task, seed, actions, sim.episode_max_reward,
                               reference=actions.copy())
    finally:
        sim.close()


def tune_replay(sim: AlohaSim, trajectory: JointTrajectory, iterations: int = 4,
                gain: float = 1.0, tolerance: float = 2e-3) -> JointTrajectory:
    """Iterative learning control: correct the arm commands until the replay tracks the plan.

    The position servos sag under gravity and lag the end-effector rollout by 0.01-0.03 rad,
    centimetres at the fingertips: enough to miss the socket. Each iteration replays the
    commands and adds ``gain`` times the tracking error of the next step's joints to them.
    Grippers keep their commands (squeezing an object, they never reach them).

    Args:
        sim: a joint-controlled simulator.
        trajectory: from :func:`plan_joint_trajectory` (with ``reference``).
        iterations: at most this many replays.
        gain: learning gain (0, 1.5].
        tolerance: stop once the largest arm tracking error (rad) is below it and the replay
            succeeds.

    Returns:
        A trajectory with the corrected ``actions`` (the input is not modified).
    """
    if trajectory.reference is None:
        raise SimError("trajectory has no reference joint positions to track")
    if not 0 < gain <= 1.5:
        raise SimError(f"gain must be in (0, 1.5], got {gain}")
    arm = np.ones(sim.robot.dim, dtype=bool)
    for group in sim.robot.arm_group_indices().values():
        arm[group["gripper_index"]] = False
    reference = trajectory.reference
    actions = trajectory.actions.copy()
    low, high = sim.robot.position_min, sim.robot.position_max
    for _ in range(iterations):
        tuned = JointTrajectory(trajectory.task, trajectory.seed, actions, trajectory.ee_reward,
                                reference)
        reached = np.empty_like(actions)
        for t, step in enumerate(run_scripted_episode(sim, tuned)):
            if t > 0:  # observed before step t = reached after step t - 1
                reached[t - 1] = step.qpos
        reached[-1] = sim.joint_positions()
        error = (reference - reached)[:, arm]
        worst = float(np.abs(error).max())
        logger.debug("seed %d: tracking error %.4f rad, success %s", trajectory.seed, worst,
                     sim.success)
        if worst < tolerance and sim.success:
            break
        actions[:, arm] = np.clip(actions[:, arm] + gain * error, low[arm], high[arm])
    return JointTrajectory(trajectory.task, trajectory.seed, actions, trajectory.ee_reward,
                           reference)


@dataclass
class EpisodeStep:
    """One control step of a replayed demonstration.

    Attributes:
        time: simulated seconds since the episode start, at which ``observation`` was taken
            and ``action`` was commanded.
        qpos / qvel: (14,) observed ALOHA vector and its velocity.
        images: ``{camera: (H, W, 3) uint8}`` rendered at ``time`` (empty when not asked).
        action: (14,) the command sent at ``time``.
        reward: stage reward after the step (0..4).
        driver_states: per-arm driver joint states at ``time`` (see
            :meth:`AlohaSim.driver_joint_states`).
    """

    time: float
    qpos: np.ndarray
    qvel: np.ndarray
    action: np.ndarray
    reward: int
    images: dict[str, np.ndarray] = field(default_factory=dict)
    driver_states: list[dict] = field(default_factory=list)


def run_scripted_episode(sim: AlohaSim, trajectory: JointTrajectory,
                         cameras: Sequence[str] = (),
                         camera_every: int = 1) -> Iterator[EpisodeStep]:
    """Replay ``trajectory`` in the joint-controlled ``sim``, one step per yield.

    Args:
        sim: a joint-controlled simulator (``mocap=False``); it is reset to the trajectory's
            task and seed.
        trajectory: from :func:`plan_joint_trajectory`.
        cameras: MuJoCo cameras to render with each observation.
        camera_every: render every n-th step only (others carry no images).

    Yields:
        :class:`EpisodeStep`; after the last, ``sim.success`` tells whether it succeeded.
    """
    if sim.mocap:
        raise SimError("replay needs the joint-controlled sim (mocap=False)")
    if camera_every < 1:
        raise SimError(f"camera_every must be >= 1, got {camera_every}")
    sim.reset(trajectory.task, seed=trajectory.seed)
    for t, action in enumerate(trajectory.actions):
        images = sim.render(cameras) if cameras and t % camera_every == 0 else {}
        step = EpisodeStep(time=sim.time, qpos=sim.joint_positions(),
                           qvel=sim.joint_velocities(), action=action.copy(), reward=0,
                           images=images, driver_states=sim.driver_joint_states())
        step.reward = sim.step(action)
        yield step


def evaluate(robot: RobotConfig, task: str, seeds: Sequence[int],
             config: SimConfig | None = None, progress: bool = False) -> dict:
    """Scripted success rate of ``task`` over ``seeds`` (end-effector rollout and replay).

    Returns:
        ``{"task", "episodes", "ee_success_rate", "replay_success_rate", "failed_seeds"}``.
    """
    config = SimConfig(**{**(config or SimConfig()).__dict__, "task": task})
    sim = AlohaSim(robot, config)
    ee_ok = replay_ok = 0
    failed = []
    iterator = seeds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(seeds, desc=f"scripted {task}", unit="episode")
    try:
        for seed in iterator:
            trajectory = tune_replay(sim, plan_joint_trajectory(robot, task, seed, config))
            ee_ok += trajectory.ee_reward >= 4
            for _ in run_scripted_episode(sim, trajectory):
                pass
            replay_ok += sim.success
            if not sim.success:
                failed.append(int(seed))
    finally:
        sim.close()
    n = max(len(seeds), 1)
    return {"task": task, "episodes": len(seeds), "ee_success_rate": ee_ok / n,
            "replay_success_rate": replay_ok / n, "failed_seeds": failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vla_policy_node.sim.scripted",
        description="Scripted ALOHA demonstrations in simulation: plan each episode with "
                    "end-effector waypoints, replay it in joint space, report the success rate.")
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--episodes", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--config", default=str(default_config_path()),
                        help="parameter file with the robot and sim_aloha sections")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_node_params(args.config, "sim_aloha")
    robot = RobotConfig.from_params(params)
    config = SimConfig.from_params(params)
    seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    results = []
    for task in (TASKS if args.task == "all" else (args.task,)):
        start = time.perf_counter()
        result = evaluate(robot, task, seeds, config, progress=True)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["instruction"] = INSTRUCTIONS[task]
        results.append(result)
        print(f"{task}: replay success {result['replay_success_rate']:.0%}, end-effector "
              f"{result['ee_success_rate']:.0%} over {len(seeds)} seeds "
              f"(failed: {result['failed_seeds']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
