"""Training windows for families with history (RoboFlamingo): W frames of one episode.

A sample is the window of frames t, t+s, ..., t+(W-1)s (s = frame stride) of one episode, each
with its camera images and its (K, D) actions ``actions[f:f+K]`` (the end padded with the last
action). As released, only windows that fit inside an episode are used (every start that
fits); shorter episodes are skipped with a warning. The index space is the list of windows, so
the loop's sampler (:func:`batch_indices`) draws windows exactly as it draws frames for OFT.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from vla_policy_node.data.episodes import action_window
from vla_policy_node.train.dataset import DatasetError, EpisodeDataset

logger = logging.getLogger(__name__)


class WindowDataset(EpisodeDataset):
    """Windows of ``window`` frames (stride ``frame_stride``) over a set of episode files."""

    # A sample is W frames, read by sample() straight from the episodes: the image cache,
    # keyed by frame, is not wired in (nor is it needed: history families run their own
    # image chain, which the cache does not split).
    supports_image_cache = False

    def __init__(self, paths: Sequence[str | os.PathLike], camera_names: Sequence[str],
                 window: int, frame_stride: int, chunk_length: int, action_dim: int) -> None:
        super().__init__(paths, camera_names, chunk_length, action_dim)
        if window < 1 or frame_stride < 1:
            raise DatasetError(f"window {window} and frame_stride {frame_stride} must be >= 1")
        self.window, self.stride = window, frame_stride
        span = (window - 1) * frame_stride + 1
        starts = []
        for e, episode in enumerate(self.episodes):
            n = len(episode) - span + 1
            if n <= 0:
                logger.warning("%s: %d frames, shorter than one window (%d): skipped",
                               self.paths[e], len(episode), span)
                continue
            starts.append(np.stack([np.full(n, e), np.arange(n)], axis=1))
        if not starts:
            raise DatasetError(f"no episode holds a window of {span} frames "
                               f"(window {window}, frame stride {frame_stride})")
        self._windows = np.concatenate(starts)

    def __len__(self) -> int:
        return int(len(self._windows))

    def sample(self, index: int) -> dict[str, Any]:
        """images: W camera dicts; proprio (W, D); actions (W, K, D); instruction."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
        e, t = (int(v) for v in self._windows[index])
        episode = self.episodes[e]
        frames = range(t, t + self.window * self.stride, self.stride)
        return {"images": [episode.images(f, self.camera_names) for f in frames],
                "proprio": np.stack([episode.qpos[f] for f in frames]),
                "actions": np.stack([action_window(episode.action, f, self.chunk_length)
                                     for f in frames]),
                "instruction": episode.instruction}
