"""The action chunk as the ROS-free core sees it (the twin of ``vla_msgs/ActionChunk``)."""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np


class ChunkError(ValueError):
    """An action chunk that must not be executed (wrong size, NaN, unknown joints...)."""


@dataclass(frozen=True)
class ActionChunk:
    """K future absolute joint targets predicted from one observation.

    Action ``i`` targets time ``stamp + i * step_period`` (seconds, on the ROS clock).

    Attributes:
        stamp: capture time of the observation the chunk was predicted from, seconds.
        actions: (K, D) float64 absolute targets, row i for time ``stamp + i * step_period``.
        joint_names: the D joint names of each action row.
        step_period: seconds between consecutive actions (> 0).
        chunk_id: increasing id given by the producer.
        instruction: the language instruction it was conditioned on.
        model_latency: seconds the model took to produce it.
    """

    stamp: float
    actions: np.ndarray
    joint_names: tuple[str, ...]
    step_period: float
    chunk_id: int = 0
    instruction: str = ""
    model_latency: float = 0.0

    def __post_init__(self) -> None:
        actions = np.array(self.actions, dtype=np.float64)
        if actions.ndim != 2:
            raise ChunkError(f"actions must be (K, D), got shape {actions.shape}")
        k, d = actions.shape
        if k == 0 or d == 0:
            raise ChunkError(f"empty chunk: shape {actions.shape}")
        names = tuple(self.joint_names)
        if len(names) != d:
            raise ChunkError(
                f"{len(names)} joint names for action dimension {d}: {list(names)}")
        if len(set(names)) != len(names):
            raise ChunkError(f"duplicate joint names: {list(names)}")
        if not np.all(np.isfinite(actions)):
            bad = np.argwhere(~np.isfinite(actions))[0]
            raise ChunkError(
                f"non-finite action at step {bad[0]}, joint {names[bad[1]]!r}: "
                f"{actions[bad[0], bad[1]]}")
        if not (math.isfinite(self.step_period) and self.step_period > 0):
            raise ChunkError(f"step_period must be a positive number, got {self.step_period}")
        if not math.isfinite(self.stamp):
            raise ChunkError(f"stamp must be finite, got {self.stamp}")
        actions.setflags(write=False)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "joint_names", names)

    @property
    def chunk_length(self) -> int:
        """K, the number of actions."""
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        """D, the dimension of one action."""
        return int(self.actions.shape[1])

    @property
    def end_time(self) -> float:
        """Target time of the last action."""
        return self.stamp + (self.chunk_length - 1) * self.step_period

    def times(self) -> np.ndarray:
        """(K,) target time of each action."""
        return self.stamp + np.arange(self.chunk_length) * self.step_period
