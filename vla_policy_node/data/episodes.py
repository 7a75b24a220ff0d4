"""ALOHA-style HDF5 episodes: one file per episode, as ACT / ALOHA record them.

Layout (T frames at ``rate_hz``, D joints, cameras in model order)::

    /observations/qpos            (T, D) float64  follower positions (grippers normalized 0..1)
    /observations/qvel            (T, D) float64  follower velocities (zeros when not recorded)
    /observations/effort          (T, D) float64  follower efforts (zeros when not recorded)
    /observations/images/<cam>    (T, H, W, 3) uint8 RGB, one HDF5 chunk per frame
    /action                       (T, D) float64  commanded positions (grippers normalized)
    /timestamp                    (T,) float64    reference clock, seconds (ROS time)
    attrs: sim, instruction, success, rate_hz, joint_names, camera_names, source, ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

FORMAT_VERSION = 1


class EpisodeError(ValueError):
    """An episode file that does not have the expected layout (the message says what)."""


class EpisodeWriter:
    """Write one episode; image datasets are created when a camera's first frame arrives.

    Args:
        path: output file (written as is; the caller renames a temporary file into place).
        num_frames: T.
        joint_names: the D joint names.
        camera_names: cameras in model order.
        compression: None, "lzf" or "gzip" for the image datasets.
    """

    def __init__(self, path: str | os.PathLike, num_frames: int, joint_names: Sequence[str],
                 camera_names: Sequence[str], compression: str | None = None) -> None:
        if num_frames <= 0:
            raise EpisodeError(f"an episode needs at least one frame, got {num_frames}")
        if compression not in (None, "lzf", "gzip"):
            raise EpisodeError(f"compression must be none, lzf or gzip, got {compression!r}")
        self.path = Path(path)
        self.num_frames = num_frames
        self.dim = len(joint_names)
        self.camera_names = tuple(camera_names)
        self.compression = compression
        self._file = h5py.File(self.path, "w")
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["sim"] = False
        self._file.attrs["joint_names"] = json.dumps(list(joint_names))
        self._file.attrs["camera_names"] = json.dumps(list(camera_names))
        self._images = self._file.create_group("observations/images")
        self._written = {name: 0 for name in self.camera_names}
        self._datasets: dict[str, h5py.Dataset] = {}
        self._frame_shapes: dict[str, tuple[int, ...]] = {}

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write_arrays(self, qpos: np.ndarray, action: np.ndarray, timestamp: np.ndarray,
                     qvel: np.ndarray | None = None, effort: np.ndarray | None = None) -> None:
        """Write the (T, D) vectors and the (T,) clock."""
        shape = (self.num_frames, self.dim)
        for name, value in (("qpos", qpos), ("action", action), ("qvel", qvel),
                            ("effort", effort)):
            if value is not None and np.shape(value) != shape:
                raise EpisodeError(f"{name} must be {shape}, got {np.shape(value)}")
        zeros = np.zeros(shape)
        obs = self._file["observations"]
        obs.create_dataset("qpos", data=np.asarray(qpos, np.float64))
        obs.create_dataset("qvel", data=zeros if qvel is None else np.asarray(qvel, np.float64))
        obs.create_dataset("effort",
                           data=zeros if effort is None else np.asarray(effort, np.float64))
        self._file.create_dataset("action", data=np.asarray(action, np.float64))
        self._file.create_dataset("timestamp", data=np.asarray(timestamp, np.float64))

    def write_image(self, camera: str, index: int, image: np.ndarray) -> None:
        """Write one (H, W, 3) uint8 frame of ``camera`` at row ``index``.

        Uncompressed datasets are chunked one frame per chunk, so the frame is written as a
        raw chunk (``write_direct_chunk``): no selection, no type conversion and no copy of
        an image that is still a view into the message buffer (about 2x faster than a
        slice assignment, and conversion is bound by these writes).
        """
        dataset = self._datasets.get(camera)
        if self.compression is not None or dataset is None or not (
                isinstance(image, np.ndarray) and image.dtype == np.uint8
                and image.flags.c_contiguous):
            self.write_images(camera, index, np.asarray(image)[None])
            return
        # h5py's Dataset.shape asks HDF5 each time (~15 us): compare with the cached frame shape.
        frame_shape = self._frame_shapes[camera]
        if image.shape != frame_shape:
            raise EpisodeError(
                f"camera {camera!r} changed size from {frame_shape[:2]} to "
                f"{image.shape[:2]} within the episode")
        if not 0 <= index < self.num_frames:
            raise EpisodeError(f"frame {index} outside 0..{self.num_frames - 1}")
        dataset.id.write_direct_chunk((index, 0, 0, 0), image.data)
        self._written[camera] += 1

    def write_images(self, camera: str, start: int, images: np.ndarray) -> None:
        """Write (N, H, W, 3) uint8 frames of ``camera`` at rows ``start:start+N``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise EpisodeError(
                f"camera {camera!r}: expected (N, H, W, 3) uint8, got "
                f"{images.dtype} {images.shape}")
        if not 0 <= start and start + len(images) <= self.num_frames:
            raise EpisodeError(f"frames {start}..{start + len(images) - 1} outside "
                               f"0..{self.num_frames - 1}")
        if camera not in self._images:
            if camera not in self.camera_names:
                raise EpisodeError(f"unknown camera {camera!r}; cameras: {self.camera_names}")
            h, w = images.shape[1:3]
            self._images.create_dataset(
                camera, shape=(self.num_frames, h, w, 3), dtype=np.uint8,
                chunks=(1, h, w, 3), compression=self.compression)
        dataset = self._datasets.setdefault(camera, self._images[camera])
        self._frame_shapes.setdefault(camera, tuple(dataset.shape[1:]))
        if images.shape[1:] != dataset.shape[1:]:
            raise EpisodeError(
                f"camera {camera!r} changed size from {dataset.shape[1:3]} to "
                f"{images.shape[1:3]} within the episode")
        dataset[start:start + len(images)] = images
        self._written[camera] += len(images)

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            if value is None:
                continue
            if isinstance(value, (dict, list, tuple)):
                value = json.dumps(value)
            self._file.attrs[key] = value

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def missing_images(self) -> dict[str, int]:
        """Camera -> frames not written yet (all should be 0 before closing)."""
        return {c: self.num_frames - n for c, n in self._written.items()
                if n != self.num_frames}


class Episode:
    """Read access to one episode file (vectors loaded, images on demand).

    Attributes:
        qpos, action: (T, D) float64.
        instruction: the language instruction.
        camera_names: cameras in model order.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise EpisodeError(f"cannot open episode {self.path}: {exc}") from exc
        try:
            f = self._file
            for key in ("observations/qpos", "action"):
                if key not in f:
                    raise EpisodeError(f"{self.path}: missing dataset /{key}")
            self.qpos = f["observations/qpos"][()]
            self.action = f["action"][()]
            if self.qpos.shape != self.action.shape or self.qpos.ndim != 2:
                raise EpisodeError(
                    f"{self.path}: qpos {self.qpos.shape} and action {self.action.shape} "
                    f"must both be (T, D)")
            self.timestamp = f["timestamp"][()] if "timestamp" in f else None
            self.attrs = dict(f.attrs)
            images = f.get("observations/images")
            self.camera_names = (tuple(json.loads(self.attrs["camera_names"]))
                                 if "camera_names" in self.attrs
                                 else tuple(images.keys()) if images is not None else ())
            self.joint_names = (tuple(json.loads(self.attrs["joint_names"]))
                                if "joint_names" in self.attrs else None)
            self.instruction = str(self.attrs.get("instruction", ""))
            self.success = self.attrs.get("success")
        except Exception:
            self._file.close()
            raise

    def __len__(self) -> int:
        return int(self.qpos.shape[0])

    def __enter__(self) -> "Episode":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def image(self, camera: str, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame ``index`` of ``camera``."""
        try:
            dataset = self._file["observations/images"][camera]
        except KeyError:
            raise EpisodeError(
                f"{self.path}: no camera {camera!r}; has {list(self.camera_names)}") from None
        return dataset[index]

    def images(self, index: int, cameras: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Camera -> (H, W, 3) frame ``index``."""
        return {c: self.image(c, index) for c in (cameras or self.camera_names)}


def action_window(actions: np.ndarray, t: int, k: int) -> np.ndarray:
    """(K, D) ``actions[t:t+K]``, the end padded by repeating the last action (OFT)."""
    window = actions[t:t + k]
    if len(window) < k:
        window = np.concatenate([window, np.repeat(actions[-1:], k - len(window), axis=0)])
    return window


def list_episodes(directory: str | os.PathLike) -> list[Path]:
    """Episode files (``*.hdf5``) of a dataset directory, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {directory}")
    return sorted(p for p in directory.glob("*.hdf5") if not p.name.startswith("."))


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
