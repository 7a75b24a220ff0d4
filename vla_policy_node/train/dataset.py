"""Training samples from a converted dataset directory (HDF5 episodes + statistics).

A sample is frame t of an episode: the camera images and proprio at t, the instruction, and
the (K, D) actions ``actions[t:t+K]`` (the end padded with the last action). Sampling is a
pure function of (seed, step, rank), so a resumed run draws exactly the batches the killed
run would have drawn.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_policy_node.data.episodes import action_window, Episode, list_episodes
from vla_policy_node.data.stats import STATISTICS_FILE

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset directory that cannot be trained on (the message says why)."""


class EpisodeDataset:
    """Frames of a set of episode files.

    Args:
        paths: episode files.
        camera_names: cameras the model needs, in model order.
        chunk_length: K.
        action_dim: D (checked against every episode).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], camera_names: Sequence[str],
                 chunk_length: int, action_dim: int) -> None:
        if not paths:
            raise DatasetError("no episodes")
        self.paths = [Path(p) for p in paths]
        self.camera_names = tuple(camera_names)
        self.chunk_length = chunk_length
        self.episodes: list[Episode] = []
        for path in self.paths:
            episode = Episode(path)
            self.episodes.append(episode)
            missing = [c for c in self.camera_names if c not in episode.camera_names]
            if missing:
                raise DatasetError(f"{path}: cameras {missing} missing; the episode has "
                                   f"{list(episode.camera_names)}")
            if episode.action.shape[1] != action_dim:
                raise DatasetError(f"{path}: action dimension {episode.action.shape[1]}, "
                                   f"the model needs {action_dim}")
            if not episode.instruction:
                raise DatasetError(f"{path}: no instruction")
        lengths = np.array([len(e) for e in self.episodes])
        self._starts = np.concatenate([[0], np.cumsum(lengths)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def close(self) -> None:
        for episode in self.episodes:
            episode.close()

    def locate(self, index: int) -> tuple[int, int]:
        """Global frame index -> (episode, frame)."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range 0..{len(self) - 1}")
        e = int(np.searchsorted(self._starts, index, side="right") - 1)
        return e, int(index - self._starts[e])

    def sample(self, index: int) -> dict[str, Any]:
        """Images (camera -> (H, W, 3)), proprio (D,), actions (K, D), instruction."""
        e, t = self.locate(index)
        episode = self.episodes[e]
        return {"images": episode.images(t, self.camera_names), "proprio": episode.qpos[t],
                "actions": action_window(episode.action, t, self.chunk_length),
                "instruction": episode.instruction}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        samples = [self.sample(int(i)) for i in indices]
        return {"images": [s["images"] for s in samples],
                "proprio": np.stack([s["proprio"] for s in samples]),
                "actions": np.stack([s["actions"] for s in samples]),
                "instructions": [s["instruction"] for s in samples]}


def batch_indices(num_frames: int, batch_size: int, seed: int, step: int,
                  rank: int = 0) -> np.ndarray:
    """(B,) frame indices of ``step`` on ``rank``: random with replacement, reproducible."""
    rng = np.random.default_rng([seed, step, rank])
    return rng.integers(0, num_frames, size=batch_size)


def split_episodes(directory: str | os.PathLike, val_episodes: int
                   ) -> tuple[list[Path], list[Path]]:
    """(train, validation) episode files: the last ``val_episodes`` by name are held out."""
    paths = list_episodes(directory)
    if not paths:
        raise DatasetError(f"no *.hdf5 episodes in {directory} (run vla-convert first)")
    if val_episodes < 0 or val_episodes >= len(paths):
        raise DatasetError(f"cannot hold out {val_episodes} of {len(paths)} episodes")
    if val_episodes == 0:
        return paths, []
    return paths[:-val_episodes], paths[-val_episodes:]


def load_statistics(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / STATISTICS_FILE
    if not path.is_file():
        raise DatasetError(f"{path} not found (run vla-convert on the bags first)")
    return json.loads(path.read_text())
