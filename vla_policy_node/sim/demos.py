"""Scripted simulated demonstrations written as rosbag2 episodes, like ``vla-record`` writes them.

Each episode is a scripted replay (:mod:`vla_policy_node.sim.scripted`) recorded with the
project's bag writer and topic layout (:class:`~vla_policy_node.data.spec.DataSpec`, action
source ``commands``): follower joint states with the Interbotix names and units, the Interbotix
commands that drove the arms, the cameras, the instruction and the success flag (also in the
bag's metadata). ``vla-convert`` turns them into training data like any recorded bag.

``python -m vla_policy_node.sim.demos --out demos/ --task transfer_cube --episodes 10``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
import sys
from typing import Sequence

import numpy as np

from vla_policy_node.config import default_config_path, load_node_params, RobotConfig
from vla_policy_node.data.bags import (
    BagWriter, META_ACTION_SOURCE, META_EPISODE, META_INSTRUCTION, META_SUCCESS)
from vla_policy_node.data.episodes import EPISODE_JPEG_QUALITY
from vla_policy_node.data.images import encode_compressed, JPEG_TRANSPORT_FORMAT
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.sim.aloha_sim import AlohaSim, INSTRUCTIONS, SimConfig, SimError, TASKS
from vla_policy_node.sim.scripted import (
    plan_joint_trajectory, run_scripted_episode, tune_replay)

logger = logging.getLogger(__name__)


def write_scripted_bag(path: str | os.PathLike, spec: DataSpec, sim: AlohaSim, task: str,
                       seed: int, camera_map: dict[str, str], camera_rate_hz: float = 10.0,
                       start_time: float = 1.0, storage: str = "mcap") -> bool:
    """Plan, replay and record one scripted episode; returns whether it succeeded.

    Args:
        path: new bag directory.
        spec: topics to write (its ``action_source`` must be ``commands``).
        sim: a joint-controlled simulator (its resolution is the images').
        camera_map: ALOHA camera name (``spec.camera_names``) -> MuJoCo camera.
        camera_rate_hz: image rate in simulated time.
        start_time: stamp (s) of the episode's first step.
    """
    if spec.action_source != "commands":
        raise SimError(f"scripted bags record commands; spec.action_source is "
                       f"{spec.action_source!r}")
    missing = [c for c in spec.camera_names if c not in camera_map]
    if missing:
        raise SimError(f"no simulated camera for {missing} (camera_map {camera_map})")
    if sim.config.control_period * camera_rate_hz > 1.0 + 1e-9:
        raise SimError(f"camera_rate_hz {camera_rate_hz} exceeds the control rate")
    robot = spec.robot
    trajectory = tune_replay(sim, plan_joint_trajectory(robot, task, seed, sim.config))
    camera_every = max(1, int(round(1.0 / (camera_rate_hz * sim.config.control_period))))
    topics = {t: ty for t, ty in spec.record_topics().items()}
    groups = robot.arm_group_indices()
    action_topics = spec.action_topics()
    with BagWriter(path, storage) as bag:
        types = bag.typestore.types
        Header, Time = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]
        JointState, Image = types["sensor_msgs/msg/JointState"], types["sensor_msgs/msg/Image"]
        Group = types["interbotix_xs_msgs/msg/JointGroupCommand"]
        Single = types["interbotix_xs_msgs/msg/JointSingleCommand"]
        String, Bool = types["std_msgs/msg/String"], types["std_msgs/msg/Bool"]
        Compressed = types["sensor_msgs/msg/CompressedImage"]
        for topic, msgtype in topics.items():
            bag.add_topic(topic, msgtype)

        def header(ns: int, frame: str = "") -> object:
            return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
                          frame_id=frame)

        t0 = int(round(start_time * 1e9))
        bag.write(spec.instruction_topic, t0, String(data=INSTRUCTIONS[task]))
        sim_cameras = [camera_map[c] for c in spec.camera_names]
        last_ns = t0
        for step in run_scripted_episode(sim, trajectory, sim_cameras, camera_every):
            ns = t0 + int(round(step.time * 1e9))
            last_ns = ns
            for arm, state in zip(robot.arms, step.driver_states):
                bag.write(spec.follower_topic(arm), ns, JointState(
                    header=header(ns), name=state["name"], position=state["position"],
                    velocity=state["velocity"], effort=state["effort"]))
            for arm in robot.arms:
                group = groups[arm]
                # Commands leave a moment after the observation they answer.
                bag.write(action_topics[arm]["joints"], ns + 1_000_000, Group(
                    name="arm", cmd=step.action[group["joint_indices"]].astype(np.float32)))
                bag.write(action_topics[arm]["gripper"], ns + 1_000_000, Single(
                    name=robot.gripper_joint_name,
                    cmd=float(robot.unnormalize_gripper(step.action[group["gripper_index"]]))))
            for name, topic, transport in zip(spec.camera_names, spec.camera_topics,
                                              spec.camera_transports):
                image = step.images.get(camera_map[name])
                if image is None:
                    continue
                if transport == "compressed":  # as image_transport's compressed plugin
                    bag.write(topic + "/compressed", ns, Compressed(
                        header=header(ns, f"{name}_color_optical_frame"),
                        format=JPEG_TRANSPORT_FORMAT,
                        data=np.frombuffer(encode_compressed(image, "jpeg", EPISODE_JPEG_QUALITY),
                                           np.uint8)))
                    continue
                h, w = image.shape[:2]
                bag.write(topic, ns, Image(
                    header=header(ns, f"{name}_color_optical_frame"), height=h, width=w,
                    encoding="rgb8", is_bigendian=0, step=3 * w, data=image.reshape(-1)))
        success = bool(sim.success)
        bag.write(spec.success_topic, last_ns + 20_000_000, Bool(data=success))
        bag.set_custom_data(META_INSTRUCTION, INSTRUCTIONS[task])
        bag.set_custom_data(META_SUCCESS, str(success).lower())
        bag.set_custom_data(META_EPISODE, Path(path).name)
        bag.set_custom_data(META_ACTION_SOURCE, spec.action_source)
        bag.set_custom_data("vla.sim", f"{task} seed {seed}")
    return success


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vla_policy_node.sim.demos",
        description="Record scripted simulated ALOHA demonstrations as rosbag2 episodes "
                    "(one bag per episode, with instruction and success), ready for "
                    "vla-convert.")
    parser.add_argument("--out", required=True, help="directory for the bags")
    parser.add_argument("--task", choices=TASKS, default="transfer_cube")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    parser.add_argument("--keep-failures", action="store_true",
                        help="keep bags of failed episodes (marked unsuccessful)")
    parser.add_argument("--raw-images", action="store_true",
                        help="record sensor_msgs/Image (raw RGB) instead of JPEG "
                             "CompressedImage on <camera topic>/compressed")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    from tqdm import tqdm
    import shutil

    params = load_node_params(args.config, "sim_aloha")
    robot = RobotConfig.from_params(params)
    spec = DataSpec.from_file(args.config, action_source="commands")
    spec = dataclasses.replace(spec, camera_transports=(
        "raw" if args.raw_images else "compressed",) * len(spec.camera_names))
    config = SimConfig.from_params({**params, "task": args.task})
    camera_map = dict(zip(params["cameras.names"], params["cameras.sim_names"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ok = 0
    with AlohaSim(robot, config) as sim:
        for seed in tqdm(range(args.first_seed, args.first_seed + args.episodes),
                         desc=f"{args.task} demos", unit="episode"):
            path = out / f"{args.task}_seed{seed:04d}"
            if path.exists():
                raise SystemExit(f"{path} exists; choose another --out or --first-seed")
            success = write_scripted_bag(path, spec, sim, args.task, seed, camera_map,
                                         float(params.get("camera_rate_hz", 10.0)),
                                         storage=args.storage)
            ok += success
            if not success and not args.keep_failures:
                shutil.rmtree(path)
    print(f"{ok}/{args.episodes} scripted {args.task} episodes succeeded; bags in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
