"""ROS message <-> numpy/core conversions, in one place for every node.

Nodes call these; the core never sees a ROS message (except image decoding, which lives in
``vla_policy_node.data.images`` so the bag converter uses the identical function).
"""

from __future__ import annotations

import math

from builtin_interfaces.msg import Duration, Time
import numpy as np
from vla_msgs.msg import ActionChunk as ActionChunkMsg

from vla_policy_node.chunk import ActionChunk, ChunkError


def time_to_seconds(stamp: Time) -> float:
    """builtin_interfaces/Time (or Duration) -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


duration_to_seconds = time_to_seconds


def _split_seconds(seconds: float) -> tuple[int, int]:
    if not math.isfinite(seconds):
        raise ValueError(f"time must be finite, got {seconds}")
    total_ns = int(round(seconds * 1e9))
    sec, nanosec = divmod(total_ns, 1_000_000_000)
    return int(sec), int(nanosec)


def seconds_to_time(seconds: float) -> Time:
    """float seconds (>= 0) -> builtin_interfaces/Time."""
    if seconds < 0:
        raise ValueError(f"a ROS Time cannot be negative, got {seconds}")
    sec, nanosec = _split_seconds(seconds)
    return Time(sec=sec, nanosec=nanosec)


def seconds_to_duration(seconds: float) -> Duration:
    """float seconds -> builtin_interfaces/Duration (negative allowed)."""
    sec, nanosec = _split_seconds(seconds)
    return Duration(sec=sec, nanosec=nanosec)


def action_chunk_to_msg(chunk: ActionChunk) -> ActionChunkMsg:
    """Core ActionChunk -> vla_msgs/ActionChunk (actions row-major)."""
    msg = ActionChunkMsg()
    msg.header.stamp = seconds_to_time(chunk.stamp)
    msg.chunk_id = int(chunk.chunk_id)
    msg.instruction = chunk.instruction
    msg.joint_names = list(chunk.joint_names)
    msg.chunk_length = chunk.chunk_length
    msg.action_dim = chunk.action_dim
    msg.actions = chunk.actions.reshape(-1).tolist()
    msg.step_period = seconds_to_duration(chunk.step_period)
    msg.model_latency = seconds_to_duration(chunk.model_latency)
    return msg


def action_chunk_from_msg(msg: ActionChunkMsg) -> ActionChunk:
    """vla_msgs/ActionChunk -> core ActionChunk.

    Raises:
        ChunkError: sizes disagree (K*D != len(actions), D != len(joint_names)), non-finite
            values, non-positive step period.
    """
    k, d = int(msg.chunk_length), int(msg.action_dim)
    actions = np.asarray(msg.actions, dtype=np.float64)
    if k * d != actions.size or k == 0 or d == 0:
        raise ChunkError(
            f"chunk {msg.chunk_id}: chunk_length {k} x action_dim {d} does not match "
            f"{actions.size} actions")
    return ActionChunk(
        stamp=time_to_seconds(msg.header.stamp),
        actions=actions.reshape(k, d),
        joint_names=tuple(msg.joint_names),
        step_period=duration_to_seconds(msg.step_period),
        chunk_id=int(msg.chunk_id),
        instruction=msg.instruction,
        model_latency=duration_to_seconds(msg.model_latency),
    )
