"""dataset_statistics.json: the normalization statistics OFT checkpoints carry.

``{key: {"action": {"min","max","q01","q99","mean","std","mask"}, "proprio": {...},
"num_transitions": N, "num_trajectories": E}}``, lists of D floats (mask: D bools).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_policy_node.data.episodes import Episode, write_json_atomic

logger = logging.getLogger(__name__)

STATISTICS_FILE = "dataset_statistics.json"


def vector_statistics(values: np.ndarray, mask: Sequence[bool]) -> dict[str, list]:
    """Statistics of (N, D) samples.

    Raises:
        ValueError: no samples, non-finite samples or a mask of the wrong length.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"statistics need (N, D) samples with N > 0, got {values.shape}")
    if len(mask) != values.shape[1]:
        raise ValueError(f"mask has {len(mask)} entries for dimension {values.shape[1]}")
    if not np.all(np.isfinite(values)):
        row, col = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"non-finite sample {values[row, col]} at row {row}, column {col}")
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "max": values.max(0).tolist(),
        "min": values.min(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
        "mask": [bool(m) for m in mask],
    }


def compute_statistics(episodes: Sequence[str | os.PathLike], key: str,
                       joint_names: Sequence[str],
                       unnormalized_joints: Sequence[str] = ()) -> dict[str, Any]:
    """Statistics over every frame of ``episodes`` under ``key``.

    Raises:
        ValueError: no episodes, or episodes with other joint names than ``joint_names``.
    """
    if not episodes:
        raise ValueError("no episodes to compute statistics from")
    mask = [name not in set(unnormalized_joints) for name in joint_names]
    actions, proprio = [], []
    for path in episodes:
        with Episode(path) as episode:
            if episode.joint_names is not None and list(episode.joint_names) != list(
                    joint_names):
                raise ValueError(
                    f"{path}: joint names {list(episode.joint_names)} differ from the "
                    f"dataset's {list(joint_names)}")
            actions.append(episode.action)
            proprio.append(episode.qpos)
    return {key: {
        "action": vector_statistics(np.concatenate(actions), mask),
        "proprio": vector_statistics(np.concatenate(proprio), mask),
        "num_transitions": int(sum(len(a) for a in actions)),
        "num_trajectories": len(actions),
    }}


def write_statistics(directory: str | os.PathLike, statistics: dict[str, Any]) -> Path:
    path = Path(directory) / STATISTICS_FILE
    write_json_atomic(path, statistics)
    return path
