"""What an episode is made of: topics, joints and timing, all read from config/aloha.yaml.

The recorder (which topics to write) and the converter (which topics make a frame) share this
one description, so a bag recorded with the config converts with the same config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
import os
from typing import Any, Mapping

from vla_policy_node.config import default_config_path, load_node_params, RobotConfig

ACTION_SOURCES = ("leader", "commands")
CLOCKS = ("header", "log")


def _split_names(value: Any) -> tuple[str, ...]:
    """A comma-separated string (ROS parameter files cannot type ``[]``) or a list."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in (value or ()))


def _recorded_transports(value: Any, cameras: int) -> tuple[str, ...]:
    """``vla_recorder camera_transports``: comma-separated per camera, or one for all."""
    transports = _split_names(value)
    return transports * cameras if len(transports) == 1 else transports


@dataclass(frozen=True)
class DataSpec:
    """Topics and timing of a recorded episode.

    Attributes:
        robot: the robot description (joint names, arms, follower gripper calibration).
        camera_names / camera_topics: cameras in model order and their topics.
        camera_transports: ``raw`` (Image on the topic) or ``compressed`` (CompressedImage on
            ``<topic>/compressed``) per camera; empty: all raw. What is recorded: the
            recorder's ``camera_transports`` when set, else the policy's
            ``cameras.transports``.
        action_source: ``leader`` (leader arms' joint states) or ``commands`` (executor).
        leader_arms: leader namespaces in ``robot.arms`` order.
        leader_gripper_open / leader_gripper_close: leader gripper calibration (driver units).
        group_topic / single_topic: command topic patterns (``{arm}`` = follower arm).
        instruction_topic / success_topic: std_msgs String / Bool topics of the episode.
        rate_hz: training rate of the reference clock.
        max_age: seconds after which a stream's latest message is too old for a frame.
        clock: ``header`` (capture stamps) or ``log`` (bag receive time).
        min_segment_duration: shorter runs of valid frames are not written (seconds).
        unnormalized_joints: joints with mask False in the statistics.
        extra_topics: recorded but not converted.
    """

    robot: RobotConfig
    camera_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    camera_transports: tuple[str, ...] = ()
    action_source: str = "leader"
    leader_arms: tuple[str, ...] = ("leader_left", "leader_right")
    leader_gripper_open: float = 0.8298
    leader_gripper_close: float = -0.0552
    group_topic: str = "/{arm}/commands/joint_group"
    single_topic: str = "/{arm}/commands/joint_single"
    instruction_topic: str = "/vla/instruction"
    success_topic: str = "/vla/episode_success"
    rate_hz: float = 25.0
    max_age: float = 0.1
    clock: str = "header"
    min_segment_duration: float = 1.0
    unnormalized_joints: tuple[str, ...] = ()
    extra_topics: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.camera_names:
            raise ValueError("no cameras configured (vla_policy cameras.names is empty)")
        if len(self.camera_names) != len(self.camera_topics):
            raise ValueError(
                f"cameras.names {list(self.camera_names)} and cameras.topics "
                f"{list(self.camera_topics)} differ in length")
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"duplicate camera names: {list(self.camera_names)}")
        transports = self.camera_transports or ("raw",) * len(self.camera_names)
        if len(transports) != len(self.camera_names) or not set(transports) <= {
                "raw", "compressed"}:
            raise ValueError(
                f"cameras.transports (vla_recorder camera_transports) must be raw/compressed "
                f"per camera, got {list(transports)}")
        object.__setattr__(self, "camera_transports", tuple(transports))
        if self.action_source not in ACTION_SOURCES:
            raise ValueError(
                f"action_source must be one of {ACTION_SOURCES}, got {self.action_source!r}")
        if self.action_source == "leader" and len(self.leader_arms) != len(self.robot.arms):
            raise ValueError(
                f"leader.arms {list(self.leader_arms)} must pair with robot.arms "
                f"{list(self.robot.arms)}")
        if self.leader_gripper_open == self.leader_gripper_close:
            raise ValueError("leader.gripper_open_position equals gripper_close_position")
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"convert.rate_hz must be > 0, got {self.rate_hz}")
        if not (math.isfinite(self.max_age) and self.max_age > 0):
            raise ValueError(f"convert.max_age must be > 0, got {self.max_age}")
        if self.clock not in CLOCKS:
            raise ValueError(f"convert.clock must be one of {CLOCKS}, got {self.clock!r}")
        if not self.min_segment_duration >= 0:
            raise ValueError(
                f"convert.min_segment_duration must be >= 0, got {self.min_segment_duration}")
        unknown = [j for j in self.unnormalized_joints if j not in self.robot.joint_names]
        if unknown:
            raise ValueError(f"convert.unnormalized_joints names unknown joints {unknown}")

    @classmethod
    def from_params(cls, policy: Mapping[str, Any], recorder: Mapping[str, Any],
                    **overrides: Any) -> "DataSpec":
        """From the flat parameters of the ``vla_policy`` and ``vla_recorder`` sections.

        A ``camera_transports`` override may be the recorder parameter's string form.
        """
        cameras = len(policy.get("cameras.names", ()))
        values: dict[str, Any] = dict(
            robot=RobotConfig.from_params(recorder),
            camera_names=tuple(policy.get("cameras.names", ())),
            camera_topics=tuple(policy.get("cameras.topics", ())),
            camera_transports=(
                _recorded_transports(recorder.get("camera_transports", ""), cameras)
                or tuple(policy.get("cameras.transports", ()))),
            action_source=str(recorder.get("action_source", "leader")),
            leader_arms=tuple(recorder.get("leader.arms", ("leader_left", "leader_right"))),
            leader_gripper_open=float(recorder.get("leader.gripper_open_position", 0.8298)),
            leader_gripper_close=float(recorder.get("leader.gripper_close_position", -0.0552)),
            group_topic=str(recorder.get("commands.group_topic", cls.group_topic)),
            single_topic=str(recorder.get("commands.single_topic", cls.single_topic)),
            instruction_topic=str(recorder.get("instruction_topic", cls.instruction_topic)),
            success_topic=str(recorder.get("success_topic", cls.success_topic)),
            rate_hz=float(recorder.get("convert.rate_hz", 25.0)),
            max_age=float(recorder.get("convert.max_age", 0.1)),
            clock=str(recorder.get("convert.clock", "header")),
            min_segment_duration=float(recorder.get("convert.min_segment_duration", 1.0)),
            unnormalized_joints=_split_names(recorder.get("convert.unnormalized_joints", "")),
            extra_topics=_split_names(recorder.get("extra_topics", "")),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values["camera_transports"], str):
            values["camera_transports"] = _recorded_transports(values["camera_transports"],
                                                               len(values["camera_names"]))
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, **overrides: Any) -> "DataSpec":
        """Read config/aloha.yaml (or ``path``); ``overrides`` replace single fields."""
        path = path or default_config_path()
        return cls.from_params(load_node_params(path, "vla_policy"),
                               load_node_params(path, "vla_recorder"), **overrides)

    # ---- topics -------------------------------------------------------------------------
    def follower_topic(self, arm: str) -> str:
        return f"/{arm}/{self.robot.joint_states_topic_suffix}"

    def leader_topic(self, leader: str) -> str:
        return f"/{leader}/{self.robot.joint_states_topic_suffix}"

    def proprio_topics(self) -> dict[str, str]:
        """Follower arm -> its JointState topic."""
        return {arm: self.follower_topic(arm) for arm in self.robot.arms}

    def action_topics(self) -> dict[str, dict[str, str]]:
        """Follower arm -> {"joints": topic, "gripper": topic} of the commanding streams.

        For the leader source both entries are the leader's JointState topic.
        """
        topics: dict[str, dict[str, str]] = {}
        for i, arm in enumerate(self.robot.arms):
            if self.action_source == "leader":
                topic = self.leader_topic(self.leader_arms[i])
                topics[arm] = {"joints": topic, "gripper": topic}
            else:
                topics[arm] = {"joints": self.group_topic.format(arm=arm),
                               "gripper": self.single_topic.format(arm=arm)}
        return topics

    def record_topics(self) -> dict[str, str]:
        """Topic -> ROS 2 type of everything ``vla-record`` writes (extras excluded)."""
        topics = {}
        for topic, transport in zip(self.camera_topics, self.camera_transports):
            if transport == "raw":
                topics[topic] = "sensor_msgs/msg/Image"
            else:
                topics[topic + "/compressed"] = "sensor_msgs/msg/CompressedImage"
        for topic in self.proprio_topics().values():
            topics[topic] = "sensor_msgs/msg/JointState"
        for entry in self.action_topics().values():
            if self.action_source == "leader":
                topics[entry["joints"]] = "sensor_msgs/msg/JointState"
            else:
                topics[entry["joints"]] = "interbotix_xs_msgs/msg/JointGroupCommand"
                topics[entry["gripper"]] = "interbotix_xs_msgs/msg/JointSingleCommand"
        topics[self.instruction_topic] = "std_msgs/msg/String"
        topics[self.success_topic] = "std_msgs/msg/Bool"
        return topics

    def normalize_leader_gripper(self, position: Any) -> Any:
        return (position - self.leader_gripper_close) / (
            self.leader_gripper_open - self.leader_gripper_close)
