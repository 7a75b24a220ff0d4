"""A policy acting in the simulated ALOHA in one process, without ROS.

vla-eval measures success through the real node set; this loop is the short, deterministic
version of it for checks that need the simulator's ground truth (where the grippers and the
objects are), e.g. that a trained policy reaches for the cube where random weights do not. It
replans like the executor does on demand: a chunk is predicted, its first ``execute_steps``
actions are followed (linearly interpolated at the control period), then the next one is
predicted from fresh images and joint positions.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Any, Mapping

import numpy as np

from vla_policy_node.sim.aloha_sim import AlohaSim

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutTrace:
    """What one rollout did.

    Attributes:
        rewards: (steps,) stage reward after each control step.
        gripper_object_distance: (steps + 1, 2) distance (m) from the point between the
            fingers of the left and right gripper to the task's first object (the cube, the
            peg), before the first step and after each one.
        object_displacement: (steps + 1,) horizontal distance (m) of that object from where the
            episode placed it.
        chunks: chunks predicted.
        success: the task's final stage was reached.
    """

    rewards: np.ndarray
    gripper_object_distance: np.ndarray
    object_displacement: np.ndarray
    chunks: int
    success: bool


def run_policy_in_sim(policy: Any, sim: AlohaSim, instruction: str, steps: int,
                      camera_map: Mapping[str, str], step_period: float,
                      execute_steps: int = 15) -> RolloutTrace:
    """Let ``policy`` act for ``steps`` control periods from the sim's current state.

    Args:
        policy: any family's policy (``infer(images, proprio, instruction).actions`` is a
            (K, 14) chunk of absolute targets, one every ``step_period`` seconds).
        sim: a reset simulator; its camera resolution is what the policy sees.
        camera_map: policy camera name -> simulator camera name (config ``cameras.names`` ->
            ``cameras.sim_names``).
        step_period: seconds between the actions of a chunk (the policy node's
            ``step_period``).
        execute_steps: chunk actions followed before the next prediction (at most K).
    """
    if steps < 1 or execute_steps < 1 or not step_period > 0:
        raise ValueError(f"steps {steps}, execute_steps {execute_steps} and step_period "
                         f"{step_period} must be positive")
    period = sim.config.control_period

    placed = sim.object_poses()[0, :2].copy()

    def measure() -> None:
        obj = sim.object_poses()[0, :3]
        distance.append(np.linalg.norm(sim.fingertip_points() - obj, axis=1))
        displacement.append(float(np.linalg.norm(obj[:2] - placed)))

    rewards = np.zeros(steps, dtype=np.int64)
    distance: list[np.ndarray] = []
    displacement: list[float] = []
    measure()
    chunks = 0
    step = 0
    while step < steps:
        frames = sim.render(list(camera_map.values()))
        images = {name: frames[sim_name] for name, sim_name in camera_map.items()}
        actions = np.asarray(policy.infer(images, sim.joint_positions(), instruction).actions)
        chunks += 1
        used = min(execute_steps, len(actions))
        # As the executor plays a chunk: action i is due i step periods after the images
        # were taken, linearly interpolated in between.
        times = step_period * np.arange(len(actions))
        n = min(steps - step, max(1, int(round(used * step_period / period))))
        for i in range(1, n + 1):
            t = i * period
            target = np.array([np.interp(t, times, actions[:, j])
                               for j in range(actions.shape[1])])
            rewards[step] = sim.step(target)
            measure()
            step += 1
    logger.debug("rollout: %d steps, %d chunks, max reward %d", steps, chunks, rewards.max())
    return RolloutTrace(rewards=rewards, gripper_object_distance=np.stack(distance),
                        object_displacement=np.array(displacement), chunks=chunks,
                        success=bool(sim.success))
