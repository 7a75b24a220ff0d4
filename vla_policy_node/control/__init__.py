"""The chunk executor's core: buffer, merging, interpolation, safety, clock (no rclpy)."""

from vla_policy_node.control.arms import ArmCommand, ArmMapper, JointStateError
from vla_policy_node.control.buffer import (
    ActionBuffer, InsertResult, MergeConfig, MergeStrategy)
from vla_policy_node.control.clock import (
    ClockStats, ControlClock, FakeTimeSource, MonotonicTimeSource, Tick, TimeSource)
from vla_policy_node.control.executor import (
    ChunkVerdict, ExecutorConfig, ExecutorCore, ExecutorCounters, ExecutorSnapshot,
    ExecutorState)
from vla_policy_node.control.safety import SafeCommand, SafetyFilter, SafetyLimits

__all__ = [
    "ActionBuffer", "ArmCommand", "ArmMapper", "ChunkVerdict", "ClockStats", "ControlClock",
    "ExecutorConfig", "ExecutorCore", "ExecutorCounters", "ExecutorSnapshot", "ExecutorState",
    "FakeTimeSource", "InsertResult", "JointStateError", "MergeConfig", "MergeStrategy",
    "MonotonicTimeSource", "SafeCommand", "SafetyFilter", "SafetyLimits", "Tick", "TimeSource",
]
