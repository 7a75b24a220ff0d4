"""ALOHA-style HDF5 episodes: one file per episode, as ACT / ALOHA record them.

Layout (T frames at ``rate_hz``, D joints, cameras in model order)::

    /observations/qpos            (T, D) float64  follower positions (grippers normalized 0..1)
    /observations/qvel            (T, D) float64  follower velocities (zeros when not recorded)
    /observations/effort          (T, D) float64  follower efforts (zeros when not recorded)
    /observations/images/<cam>    (T, H, W, 3) uint8 RGB, one HDF5 chunk per frame
                                  or, encoded (compression jpeg/png): (N,) variable-length
                                  uint8, one JPEG/PNG per distinct frame (attrs encoding,
                                  height, width), with
    /observations/image_index/<cam>  (T,) int32: the row of images/<cam> each frame shows
                                  (a 10 Hz camera at 25 Hz stores each picture once)
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
#: Image storage: raw uint8 (optionally lzf/gzip-compressed by HDF5), or encoded pictures.
COMPRESSIONS = (None, "lzf", "gzip", "jpeg", "png")
ENCODED = ("jpeg", "png")
EPISODE_JPEG_QUALITY = 90


class _Encoded:
    """An encoded picture as the shared decoder (``decode_image``) takes it: what a
    sensor_msgs/CompressedImage carries."""

    __slots__ = ("format", "data")

    def __init__(self, fmt: str, data: np.ndarray) -> None:
        self.format, self.data = fmt, data


class EpisodeError(ValueError):
    """An episode file that does not have the expected layout (the message says what)."""


class EpisodeWriter:
    """Write one episode; image datasets are created when a camera's first frame arrives.

    Args:
        path: output file (written as is; the caller renames a temporary file into place).
        num_frames: T.
        joint_names: the D joint names.
        camera_names: cameras in model order.
        compression: None, "lzf" or "gzip" for raw image datasets; "jpeg" or "png" stores
            each distinct frame once, encoded (a frame written again as the same array
            object, e.g. a 10 Hz camera resampled at 25 Hz, only gets an index entry).
        jpeg_quality: JPEG quality (1-100).
    """

    def __init__(self, path: str | os.PathLike, num_frames: int, joint_names: Sequence[str],
                 camera_names: Sequence[str], compression: str | None = None,
                 jpeg_quality: int = EPISODE_JPEG_QUALITY) -> None:
        if num_frames <= 0:
            raise EpisodeError(f"an episode needs at least one frame, got {num_frames}")
        if compression not in COMPRESSIONS:
            raise EpisodeError(f"compression must be none, lzf, gzip, jpeg or png, got "
                               f"{compression!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise EpisodeError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.jpeg_quality = int(jpeg_quality)
        # Encoded storage: per camera the pictures, the frame -> picture index, and the last
        # picture written (a repeat of the same array is not encoded again).
        self._encoded: dict[str, list[np.ndarray]] = {}
        self._index: dict[str, np.ndarray] = {}
        self._last: dict[str, tuple[Any, int]] = {}
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

    @property
    def encodes_images(self) -> bool:
        """Images are stored encoded (JPEG/PNG), one per distinct frame."""
        return self.compression in ENCODED

    def _write_encoded(self, camera: str, index: int, image: np.ndarray) -> None:
        if camera not in self.camera_names:
            raise EpisodeError(f"unknown camera {camera!r}; cameras: {self.camera_names}")
        if not 0 <= index < self.num_frames:
            raise EpisodeError(f"frame {index} outside 0..{self.num_frames - 1}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise EpisodeError(f"camera {camera!r}: expected (H, W, 3) uint8, got "
                               f"{image.dtype} {image.shape}")
        shape = self._frame_shapes.setdefault(camera, image.shape)
        if image.shape != shape:
            raise EpisodeError(f"camera {camera!r} changed size from {shape[:2]} to "
                               f"{image.shape[:2]} within the episode")
        pictures = self._encoded.setdefault(camera, [])
        rows = self._index.setdefault(camera, np.full(self.num_frames, -1, np.int32))
        last = self._last.get(camera)
        if last is not None and last[0] is image:
            row = last[1]
        else:
            from vla_policy_node.data.images import encode_compressed
            pictures.append(np.frombuffer(encode_compressed(
                image, self.compression, self.jpeg_quality), np.uint8))
            row = len(pictures) - 1
            self._last[camera] = (image, row)  # holds the array: its identity stays unique
        if rows[index] < 0:
            self._written[camera] += 1
        rows[index] = row

    def _flush_encoded(self) -> None:
        for camera, pictures in self._encoded.items():
            h, w = self._frame_shapes[camera][:2]
            dataset = self._images.create_dataset(
                camera, shape=(len(pictures),), dtype=h5py.vlen_dtype(np.uint8))
            for row, picture in enumerate(pictures):
                dataset[row] = picture
            dataset.attrs.update(encoding=self.compression, height=h, width=w)
            self._file.create_dataset(f"observations/image_index/{camera}",
                                      data=self._index[camera])
        self._encoded.clear()

    def write_image(self, camera: str, index: int, image: np.ndarray) -> None:
        """Write one (H, W, 3) uint8 frame of ``camera`` at row ``index``.

        Uncompressed datasets are chunked one frame per chunk, so the frame is written as a
        raw chunk (``write_direct_chunk``): no selection, no type conversion and no copy of
        an image that is still a view into the message buffer (about 2x faster than a
        slice assignment, and conversion is bound by these writes).
        """
        if self.encodes_images:
            self._write_encoded(camera, index, image)
            return
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
        if self.encodes_images and images.ndim == 4:
            for i, image in enumerate(images):
                self._write_encoded(camera, start + i, image)
            return
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
            if self._encoded:
                self._flush_encoded()
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
            self._image_rows: dict[str, np.ndarray] = {}
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
        """(H, W, 3) uint8 RGB frame ``index`` of ``camera`` (encoded pictures are decoded by
        the decoder the policy node uses for CompressedImage messages)."""
        try:
            dataset = self._file["observations/images"][camera]
        except KeyError:
            raise EpisodeError(
                f"{self.path}: no camera {camera!r}; has {list(self.camera_names)}") from None
        encoding = dataset.attrs.get("encoding")
        if encoding is None:
            return dataset[index]
        rows = self._image_rows.get(camera)
        if rows is None:
            rows = self._image_rows[camera] = self._file[
                f"observations/image_index/{camera}"][()]
        row = int(rows[index])
        if row < 0:
            raise EpisodeError(f"{self.path}: camera {camera!r} has no picture for frame "
                               f"{index}")
        from vla_policy_node.data.images import decode_image, ImageDecodeError
        try:
            return decode_image(_Encoded(str(encoding), dataset[row]))
        except ImageDecodeError as exc:
            raise EpisodeError(f"{self.path}: camera {camera!r} frame {index}: {exc}") from None

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
