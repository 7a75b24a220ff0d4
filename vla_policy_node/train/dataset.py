"""Training samples from a converted dataset directory (HDF5 episodes + statistics).

A sample is frame t of an episode: the camera images and proprio at t, the instruction, and
the (K, D) actions ``actions[t:t+K]`` (the end padded with the last action).

Sampling (:func:`batch_indices`) works like torch's DistributedSampler: epoch after epoch, a
seeded permutation of all frames is cut into consecutive global micro-batches, and each rank
takes its own slice of every global batch. It is a pure function of (seed, micro-step, rank,
world), so a resumed run draws exactly the batches the killed run would have drawn, with no
sampler state to save.
"""

from __future__ import annotations

import copy
from functools import lru_cache
import hashlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

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

    #: Whether :class:`ImageCache` can serve this dataset's samples (one frame per sample).
    supports_image_cache: bool = True

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
        #: Frames already decoded and resized to the model's resolution (see ImageCache).
        self.image_cache: ImageCache | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def manifest(self) -> list[list[Any]]:
        """[[file name, frames], ...]: what a resume state records to detect a changed dataset."""
        return [[path.name, len(episode)] for path, episode in zip(self.paths, self.episodes)]

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
        images = (self.image_cache.images(index) if self.image_cache is not None
                  else episode.images(t, self.camera_names))
        return {"images": images, "proprio": episode.qpos[t],
                "actions": action_window(episode.action, t, self.chunk_length),
                "instruction": episode.instruction}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        samples = [self.sample(int(i)) for i in indices]
        return {"images": [s["images"] for s in samples],
                "proprio": np.stack([s["proprio"] for s in samples]),
                "actions": np.stack([s["actions"] for s in samples]),
                "instructions": [s["instruction"] for s in samples]}


@lru_cache(maxsize=2)
def _epoch_permutation(num_frames: int, seed: int, epoch: int) -> np.ndarray:
    # Cached: every micro-batch of an epoch reads the same permutation (a 1M-frame dataset
    # takes ~20 ms to permute); two entries cover a batch that straddles two epochs.
    order = np.random.default_rng([seed, epoch]).permutation(num_frames)
    order.setflags(write=False)
    return order


def batch_indices(num_frames: int, batch_size: int, seed: int, step: int, rank: int = 0,
                  world: int = 1) -> np.ndarray:
    """(B,) frame indices of micro-batch ``step`` on ``rank`` of ``world`` processes.

    The global micro-batch ``step`` is positions ``[step*world*B, (step+1)*world*B)`` of an
    endless stream of epochs (each a permutation of all frames seeded by (seed, epoch)); rank r
    takes the r-th block of B. Ranks never share a position, every frame is drawn once per
    epoch, and ``world`` processes with batch B draw the same samples as one process with
    batch ``world*B``.
    """
    if num_frames < 1 or batch_size < 1 or not 0 <= rank < world or step < 0:
        raise ValueError(f"bad sampling request: {num_frames} frames, batch {batch_size}, "
                         f"step {step}, rank {rank} of {world}")
    start = (step * world + rank) * batch_size
    epochs, offsets = np.divmod(np.arange(start, start + batch_size), num_frames)
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        indices[chosen] = _epoch_permutation(num_frames, seed, int(epoch))[offsets[chosen]]
    return indices


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
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None


# ====================================================================== image cache
CACHE_VERSION = 1


def _chain():
    # The policy's image chain (one function in training and deployment). Imported late: the
    # cache must follow whatever that function becomes.
    from vla_policy_node.data import images
    return images


def cacheable(processor: Any) -> bool:
    """Whether ``processor`` runs the OFT image chain that :class:`ImageCache` splits."""
    config = getattr(processor, "config", None)
    return (hasattr(processor, "prepare_image") and hasattr(_chain(), "prepare_policy_image")
            and all(hasattr(config, k) for k in ("image_size", "resize_size", "crop_scale",
                                                   "center_crop")))


def cached_stage(processor: Any, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) frame -> (S, S, 3) uint8: the deterministic first part of the policy's image
    chain (resize, JPEG round trip, resize to the model's size), what the cache stores."""
    c = processor.config
    return _chain().prepare_policy_image(image, c.image_size, c.resize_size, c.crop_scale,
                                         center_crop=False, augment=False)


def from_cached_stage(processor: Any) -> Any:
    """A view of ``processor`` whose images are :func:`cached_stage` outputs: only the rest of
    the chain runs (centre crop, or random crop + colour jitter in training), so a batch built
    from cached frames equals, byte for byte, one built from the original frames."""
    c = processor.config
    view = copy.copy(processor)

    def prepare_image(image: np.ndarray, augment: bool = False,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        # resize_size 0 and an image already at image_size: the chain starts at the crop.
        return _chain().prepare_policy_image(image, c.image_size, 0, c.crop_scale,
                                             c.center_crop, augment, rng)
    view.prepare_image = prepare_image
    return view


def cache_key(dataset: EpisodeDataset, processor: Any) -> tuple[str, dict[str, Any]]:
    """(hex key, description): the episodes' files (name, size, mtime, frames) and every
    setting of the cached stage, including the source of the image chain, so a changed file,
    model resolution or preprocessing code never reads a stale cache."""
    c = processor.config
    description = {
        "version": CACHE_VERSION,
        "episodes": [[p.name, p.stat().st_size, p.stat().st_mtime_ns, len(e)]
                     for p, e in zip(dataset.paths, dataset.episodes)],
        "cameras": list(dataset.camera_names),
        "image_size": int(c.image_size), "resize_size": int(c.resize_size),
        "chain_sha256": hashlib.sha256(inspect.getsource(_chain()).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    return key, description


class ImageCache:
    """Every frame of a dataset after :func:`cached_stage`: decoded and resized once, then
    memory-mapped (``(frames, cameras, S, S, 3)`` uint8 .npy). Building it decodes each image
    once; a training step then reads S x S images instead of decoding and resizing camera
    frames. Written to a temporary name and renamed: a killed build leaves no cache."""

    def __init__(self, path: Path, camera_names: Sequence[str]) -> None:
        self.path = Path(path)
        self.camera_names = tuple(camera_names)
        self.frames = np.load(self.path, mmap_mode="r")

    def images(self, index: int) -> dict[str, np.ndarray]:
        row = self.frames[index]
        return {c: row[i] for i, c in enumerate(self.camera_names)}

    @classmethod
    def path_for(cls, dataset: EpisodeDataset, processor: Any, directory: str | os.PathLike
                 ) -> Path:
        key, _ = cache_key(dataset, processor)
        return Path(directory) / f"images_{key}.npy"

    @classmethod
    def build(cls, dataset: EpisodeDataset, processor: Any, directory: str | os.PathLike,
              progress: Callable[[int], None] | None = None) -> "ImageCache":
        """Open the cache of ``dataset`` in ``directory``, building it first if needed."""
        key, description = cache_key(dataset, processor)
        directory = Path(directory)
        path = directory / f"images_{key}.npy"
        if path.is_file():
            return cls(path, dataset.camera_names)
        directory.mkdir(parents=True, exist_ok=True)
        size = int(processor.config.image_size)
        shape = (len(dataset), len(dataset.camera_names), size, size, 3)
        logger.info("caching %d frames x %d cameras at %dx%d in %s (%.1f GB)", shape[0],
                    shape[1], size, size, path, np.prod(shape) / 1e9)
        tmp = directory / f".images_{key}.npy.tmp"
        frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        index = 0
        for episode in dataset.episodes:
            for t in range(len(episode)):
                for j, camera in enumerate(dataset.camera_names):
                    frames[index, j] = cached_stage(processor, episode.image(camera, t))
                index += 1
                if progress is not None:
                    progress(1)
        frames.flush()
        del frames
        os.replace(tmp, path)
        (directory / f"images_{key}.json").write_text(json.dumps(description, indent=1))
        return cls(path, dataset.camera_names)
