"""Synthetic teleoperation episodes written as real rosbag2 bags (tests, benchmarks, demos).

The bags look like what ``vla-record`` writes on an ALOHA: follower and leader joint states
(driver names, gripper in radians) at ``joint_rate_hz``, cameras at ``camera_rate_hz``, the
instruction as a topic and as metadata. The images depend on the arm pose, so a model trained
on them has something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vla_policy_node.data.bags import (
    BagWriter, META_ACTION_SOURCE, META_EPISODE, META_INSTRUCTION, META_SUCCESS)
from vla_policy_node.data.images import encode_compressed, JPEG_TRANSPORT_FORMAT
from vla_policy_node.data.spec import DataSpec


@dataclass
class SyntheticEpisode:
    """How one synthetic episode looks (and, for tests, how it is broken).

    Attributes:
        duration: seconds.
        joint_rate_hz / camera_rate_hz: publishing rates.
        image_size: (H, W) of every camera.
        compressed: cameras as JPEG CompressedImage on ``<topic>/compressed``.
        instruction / success: stored in the bag (None: not stored).
        seed: trajectory phase.
        start_time: ROS time of the first message, seconds.
        omit_topics: topics left out (a bag missing a topic).
        joint_names: driver joint names written instead of the configured ones.
        camera_gap: (start, end) seconds during which no camera frames are published.
        storage: mcap or sqlite3.
    """

    duration: float = 2.0
    joint_rate_hz: float = 100.0
    camera_rate_hz: float = 30.0
    image_size: tuple[int, int] = (48, 64)
    compressed: bool = False
    instruction: str | None = "pick up the cube"
    success: bool | None = True
    seed: int = 0
    start_time: float = 1000.0
    omit_topics: Sequence[str] = ()
    joint_names: Sequence[str] | None = None
    camera_gap: tuple[float, float] | None = None
    storage: str = "mcap"


def arm_trajectory(t: np.ndarray, arm_index: int, n_joints: int, seed: int) -> np.ndarray:
    """(N, n_joints + 1) smooth joint positions and a gripper value 0..1 at times ``t``."""
    k = np.arange(n_joints + 1)
    phase = 0.7 * seed + 1.3 * arm_index + 0.5 * k
    joints = 0.4 * np.sin(2 * np.pi * 0.25 * (1 + 0.2 * k) * t[:, None] + phase)
    joints[:, -1] = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t + phase[-1])
    return joints


def render(pose: np.ndarray, size: tuple[int, int], camera_index: int) -> np.ndarray:
    """(H, W, 3) uint8 image showing the (D,) pose: colour bands and a moving square."""
    h, w = size
    image = np.empty((h, w, 3), np.uint8)
    image[:] = np.clip(128 + 100 * pose[[0, 1, 2]], 0, 255).astype(np.uint8)
    x = int((0.5 + 0.4 * np.tanh(pose[3 + camera_index % 3])) * (w - w // 4))
    y = int((0.5 + 0.4 * np.tanh(pose[-1])) * (h - h // 4))
    image[y:y + h // 4, x:x + w // 4] = (255, 255 - 60 * camera_index, 0)
    return image


def write_episode_bag(path: str | os.PathLike, spec: DataSpec,
                      episode: SyntheticEpisode | None = None) -> Path:
    """Write one synthetic episode to ``path`` (a new bag directory)."""
    ep = episode or SyntheticEpisode()
    path = Path(path)
    robot = spec.robot
    store_topics = spec.record_topics()
    if ep.compressed:
        for topic in spec.camera_topics:
            store_topics.pop(topic, None)
            store_topics[topic + "/compressed"] = "sensor_msgs/msg/CompressedImage"
    topics = {t: ty for t, ty in store_topics.items() if t not in set(ep.omit_topics)}
    driver_names = list(ep.joint_names or (
        list(robot.arm_joint_names) + [robot.gripper_joint_name]))
    n = len(robot.arm_joint_names)
    with BagWriter(path, ep.storage) as bag:
        types = bag.typestore.types
        Header = types["std_msgs/msg/Header"]
        Time = types["builtin_interfaces/msg/Time"]
        JointState = types["sensor_msgs/msg/JointState"]
        Image = types["sensor_msgs/msg/Image"]
        Compressed = types["sensor_msgs/msg/CompressedImage"]
        String = types["std_msgs/msg/String"]
        Bool = types["std_msgs/msg/Bool"]
        Group = types.get("interbotix_xs_msgs/msg/JointGroupCommand")
        Single = types.get("interbotix_xs_msgs/msg/JointSingleCommand")
        for topic, msgtype in topics.items():
            bag.add_topic(topic, msgtype)

        def header(t: float) -> object:
            ns = int(round(t * 1e9))
            return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000),
                          frame_id="")

        events: list[tuple[int, str, object]] = []
        t0 = ep.start_time
        if ep.instruction is not None and spec.instruction_topic in topics:
            events.append((int(t0 * 1e9), spec.instruction_topic, String(data=ep.instruction)))
        tj = np.arange(0.0, ep.duration, 1.0 / ep.joint_rate_hz)
        action_topics = spec.action_topics()
        for i, arm in enumerate(robot.arms):
            follower = arm_trajectory(tj, i, n, ep.seed)
            # The leader moves first; the follower tracks it ~60 ms later.
            leader = arm_trajectory(tj + 0.06, i, n, ep.seed)
            for source, values, normalize_inv in (
                    (spec.follower_topic(arm), follower, robot.unnormalize_gripper),
                    (action_topics[arm]["joints"] if spec.action_source == "leader" else None,
                     leader, lambda g: spec.leader_gripper_close + g * (
                         spec.leader_gripper_open - spec.leader_gripper_close))):
                if source is None or source not in topics:
                    continue
                positions = values.copy()
                positions[:, -1] = normalize_inv(values[:, -1])
                velocity = np.gradient(positions, tj, axis=0)
                for k, t in enumerate(tj):
                    events.append((int((t0 + t) * 1e9), source, JointState(
                        header=header(t0 + t), name=driver_names,
                        position=positions[k], velocity=velocity[k],
                        effort=np.zeros(n + 1))))
            if spec.action_source == "commands":
                group_topic = action_topics[arm]["joints"]
                single_topic = action_topics[arm]["gripper"]
                for k, t in enumerate(tj[::2]):  # commands at half the joint rate
                    ns = int((t0 + t) * 1e9)
                    value = leader[2 * k]
                    if group_topic in topics:
                        events.append((ns, group_topic, Group(
                            name="arm", cmd=value[:n].astype(np.float32))))
                    if single_topic in topics:
                        events.append((ns, single_topic, Single(
                            name=robot.gripper_joint_name,
                            cmd=float(robot.unnormalize_gripper(value[-1])))))
        tc = np.arange(0.0, ep.duration, 1.0 / ep.camera_rate_hz)
        poses = np.concatenate([arm_trajectory(tc, i, n, ep.seed)
                                for i in range(len(robot.arms))], axis=1)
        for c, topic in enumerate(spec.camera_topics):
            topic = topic + "/compressed" if ep.compressed else topic
            if topic not in topics:
                continue
            for k, t in enumerate(tc):
                if ep.camera_gap and ep.camera_gap[0] <= t < ep.camera_gap[1]:
                    continue
                rgb = render(poses[k], ep.image_size, c)
                if ep.compressed:
                    msg = Compressed(header=header(t0 + t), format=JPEG_TRANSPORT_FORMAT,
                                     data=np.frombuffer(encode_compressed(rgb), np.uint8))
                else:
                    h, w = ep.image_size
                    msg = Image(header=header(t0 + t), height=h, width=w, encoding="rgb8",
                                is_bigendian=0, step=3 * w, data=rgb.reshape(-1))
                # Cameras arrive ~5 ms after capture.
                events.append((int((t0 + t + 0.005) * 1e9), topic, msg))
        if ep.success is not None and spec.success_topic in topics:
            events.append((int((t0 + ep.duration) * 1e9), spec.success_topic,
                           Bool(data=ep.success)))
        events.sort(key=lambda e: e[0])
        for stamp, topic, msg in events:
            bag.write(topic, stamp, msg)
        if ep.instruction is not None:
            bag.set_custom_data(META_INSTRUCTION, ep.instruction)
        if ep.success is not None:
            bag.set_custom_data(META_SUCCESS, str(ep.success).lower())
        bag.set_custom_data(META_EPISODE, path.name)
        bag.set_custom_data(META_ACTION_SOURCE, spec.action_source)
    return path
