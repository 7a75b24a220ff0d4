"""What the vla_policy node decides, without ROS: observation assembly and inference triggers.

The node feeds the latest camera frames, joint states and instruction into an
:class:`ObservationStore`; a worker thread asks it for a complete, fresh :class:`Observation`
and runs the policy on it. Everything here is thread-safe and tested with plain pytest.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math
import struct
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vla_policy_node.config import RobotConfig

logger = logging.getLogger(__name__)

TRIGGER_MODES = ("on_demand", "fixed_rate", "once")
MAX_INSTRUCTION_LENGTH = 1000
#: Accepted image sizes: within this factor of a camera's configured resolution, per dimension.
DEFAULT_SIZE_FACTOR = 4.0
#: Bytes per pixel of the largest raw encoding accepted (rgba8/bgra8): bounds any image's data.
_MAX_BYTES_PER_PIXEL = 4
#: JPEG segments read before the frame header (SOF) must have come; real files need < 10.
_MAX_JPEG_SEGMENTS = 64


class ObservationUnavailable(RuntimeError):
    """No valid observation right now (missing or stale input, no instruction)."""


@dataclass(frozen=True)
class Observation:
    """One model input, assembled from the latest messages.

    Attributes:
        images: camera name -> (H, W, 3) uint8 RGB.
        proprio: (D,) joint vector in model order (grippers normalized).
        instruction: the language instruction.
        stamp: capture time the chunk is stamped with: the newest input stamp, seconds.
        age: now - oldest input stamp, seconds.
        instruction_id: increments each time the instruction changes.
    """

    images: Mapping[str, np.ndarray]
    proprio: np.ndarray
    instruction: str
    stamp: float
    age: float
    instruction_id: int


def arm_vector(robot: RobotConfig, arm: str, names: Sequence[str],
               positions: Sequence[float]) -> tuple[list[int], np.ndarray]:
    """Map one arm's driver JointState onto its entries of the D-vector.

    Returns:
        (vector indices, values): the arm's joints and (normalized) gripper.

    Raises:
        ValueError: unknown arm, missing joints, non-finite values, mismatched lengths.
    """
    groups = robot.arm_group_indices()
    if arm not in groups:
        raise ValueError(f"unknown arm {arm!r}; configured arms: {list(groups)}")
    group = groups[arm]
    if len(names) != len(positions):
        raise ValueError(f"{arm}: JointState has {len(names)} names but "
                         f"{len(positions)} positions")
    index = {name: i for i, name in enumerate(names)}
    wanted = list(group["driver_joint_names"])
    indices = list(group["joint_indices"])
    if group["gripper_index"] is not None:
        wanted.append(robot.gripper_joint_name)
        indices.append(group["gripper_index"])
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(f"{arm}: JointState lacks joints {missing} (has {list(names)})")
    values = np.array([positions[index[name]] for name in wanted], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad = [name for name, value in zip(wanted, values) if not math.isfinite(value)]
        raise ValueError(f"{arm}: non-finite positions for {bad}")
    if group["gripper_index"] is not None:
        values[-1] = robot.normalize_gripper(values[-1])
    return indices, values


@dataclass(frozen=True)
class ImageSizeRange:
    """The image sizes one camera may send (pixels, inclusive); checked before decoding."""

    min_height: int
    max_height: int
    min_width: int
    max_width: int

    @classmethod
    def around(cls, height: int, width: int, factor: float = DEFAULT_SIZE_FACTOR
               ) -> "ImageSizeRange":
        """Sizes within ``factor`` of ``height`` x ``width`` in each dimension."""
        if not (height > 0 and width > 0):
            raise ValueError(f"camera resolution must be > 0, got {height}x{width}")
        if not factor >= 1.0:
            raise ValueError(f"image size factor must be >= 1, got {factor}")
        return cls(max(1, math.ceil(height / factor)), math.floor(height * factor),
                   max(1, math.ceil(width / factor)), math.floor(width * factor))

    def __str__(self) -> str:
        return (f"{self.min_height}..{self.max_height} x {self.min_width}..{self.max_width} "
                f"(height x width)")

    @property
    def max_bytes(self) -> int:
        """Most data bytes an accepted image message may carry (raw or compressed)."""
        return self.max_height * self.max_width * _MAX_BYTES_PER_PIXEL

    def check(self, msg: Any) -> tuple[int, int]:
        """(height, width) of an image message, read without decoding it.

        ``sensor_msgs/Image``: its height/width fields, and a data length equal to
        step * height; ``CompressedImage``: the JPEG frame header or the PNG IHDR chunk.

        Raises:
            ValueError: a size outside this range, inconsistent fields, too much data, or a
                compressed image whose size cannot be read (the message says which).
        """
        data = msg.data
        raw = hasattr(msg, "encoding")
        if raw:
            self._check_size(int(msg.height), int(msg.width))
        if len(data) > self.max_bytes:
            raise ValueError(f"{len(data)} bytes of image data, more than the "
                             f"{self.max_bytes} of the largest accepted image ({self})")
        if not raw:
            height, width = compressed_image_size(data)
            self._check_size(height, width)
            return height, width
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
        if len(data) != step * height:
            raise ValueError(f"{height}x{width} image with step {step} has {len(data)} "
                             f"bytes of data, not step * height = {step * height}")
        return height, width

    def _check_size(self, height: int, width: int) -> None:
        if not (self.min_height <= height <= self.max_height
                and self.min_width <= width <= self.max_width):
            raise ValueError(f"image of {height}x{width} outside the accepted {self}")


def camera_size_ranges(names: Sequence[str], heights: Sequence[int], widths: Sequence[int],
                       factor: float = DEFAULT_SIZE_FACTOR) -> dict[str, ImageSizeRange]:
    """Camera name -> accepted sizes; one height or width applies to every camera.

    Raises:
        ValueError: lists of another length than ``names``, sizes <= 0, factor < 1.
    """
    def per_camera(values: Sequence[int], what: str) -> list[int]:
        values = [int(v) for v in values]
        if len(values) == 1:
            return values * len(names)
        if len(values) != len(names):
            raise ValueError(f"{what} has {len(values)} entries for {len(names)} cameras "
                             f"{list(names)} (give one per camera, or one for all)")
        return values

    return {name: ImageSizeRange.around(h, w, factor) for name, h, w in zip(
        names, per_camera(heights, "cameras.heights"), per_camera(widths, "cameras.widths"))}


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compressed_image_size(data: Any) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header or a PNG's IHDR chunk, without decoding.

    Raises:
        ValueError: neither JPEG nor PNG, or no readable size in its header.
    """
    view = memoryview(data).cast("B") if not isinstance(data, (list, tuple)) else \
        memoryview(bytes(data))
    n = len(view)
    if n >= 24 and bytes(view[:8]) == _PNG_MAGIC:
        if bytes(view[12:16]) != b"IHDR":
            raise ValueError("PNG without IHDR chunk first")
        width, height = struct.unpack_from(">II", view, 16)
        return height, width
    if n < 4 or bytes(view[:2]) != b"\xff\xd8":
        raise ValueError("compressed image is neither JPEG nor PNG (by its first bytes)")
    pos = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        while pos < n and view[pos] == 0xFF and pos + 1 < n and view[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > n or view[pos] != 0xFF:
            break
        marker = view[pos + 1]
        if marker == 0xDA or marker == 0xD9:  # scan data or end before a frame header
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", view, pos + 2)
        if marker in _JPEG_SOF:
            if length < 7 or pos + 9 > n:
                break
            height, width = struct.unpack_from(">HH", view, pos + 5)
            if height == 0:  # height defined later (DNL): not seen in camera frames
                break
            return height, width
        if length < 2:
            break
        pos += 2 + length
    raise ValueError("JPEG without a readable frame header (SOF) in its first "
                     f"{_MAX_JPEG_SEGMENTS} segments")


def instruction_from_cdr(raw: bytes | memoryview) -> str:
    """The text of a serialized ``std_msgs/String``, refusing what rclpy would cut silently.

    rclpy reads a string up to its first NUL, so ``"fold\\0 the towel"`` from a C++
    publisher would arrive as ``"fold"``; this reads all ``length`` bytes instead.

    Raises:
        ValueError: a NUL inside the text, bytes that are not UTF-8, or a malformed message.
    """
    if len(raw) < 9 or raw[0] != 0 or raw[1] not in (0, 1):
        raise ValueError("malformed String message (no CDR header)")
    (length,) = struct.unpack_from("<I" if raw[1] == 1 else ">I", raw, 4)
    if not 1 <= length <= len(raw) - 8 or raw[8 + length - 1] != 0:
        raise ValueError(f"malformed String message (length {length}, {len(raw) - 8} bytes)")
    text = bytes(raw[8:8 + length - 1])
    nul = text.find(0)
    if nul >= 0:
        raise ValueError(f"instruction contains a NUL character at position {nul} (it "
                         f"would be cut there): {text.decode(errors='replace')!r}")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"instruction is not UTF-8: {exc}") from None


class ObservationStore:
    """Latest input per source, with stamps; assembles observations on request.

    Images are stored as the caller gives them (an array, or a zero-argument decoder called at
    assembly time, so compressed frames are only decoded when the model needs them).
    """

    def __init__(self, camera_names: Sequence[str], robot: RobotConfig,
                 max_age: float) -> None:
        if not camera_names:
            raise ValueError("at least one camera is required")
        if not (max_age > 0):
            raise ValueError(f"max_age must be > 0 s, got {max_age}")
        self.camera_names = tuple(camera_names)
        self.robot = robot
        self.max_age = float(max_age)
        self._lock = threading.Lock()
        self._images: dict[str, tuple[Any, float]] = {}
        self._arms: dict[str, tuple[list[int], np.ndarray, float]] = {}
        self._instruction = ""
        self._instruction_id = 0

    def set_image(self, camera: str, image: np.ndarray | Callable[[], np.ndarray],
                  stamp: float) -> None:
        if camera not in self.camera_names:
            raise ValueError(f"unknown camera {camera!r}; expected one of {self.camera_names}")
        with self._lock:
            self._images[camera] = (image, float(stamp))

    def set_joint_state(self, arm: str, names: Sequence[str], positions: Sequence[float],
                        stamp: float) -> None:
        """Store one arm's state; raises ValueError (nothing stored) when it is invalid."""
        indices, values = arm_vector(self.robot, arm, names, positions)
        with self._lock:
            self._arms[arm] = (indices, values, float(stamp))

    def set_instruction(self, text: str) -> bool:
        """Set the instruction; returns True when it changed. Raises ValueError if invalid."""
        text = text.strip()
        if not text:
            raise ValueError("empty instruction")
        if "\0" in text:
            raise ValueError(f"instruction contains a NUL character at position "
                             f"{text.index(chr(0))} (ROS strings end there): {text!r}")
        if len(text) > MAX_INSTRUCTION_LENGTH:
            raise ValueError(f"instruction of {len(text)} characters (max "
                             f"{MAX_INSTRUCTION_LENGTH})")
        with self._lock:
            if text == self._instruction:
                return False
            self._instruction = text
            self._instruction_id += 1
            return True

    @property
    def instruction(self) -> str:
        with self._lock:
            return self._instruction

    @property
    def instruction_id(self) -> int:
        """Increments each time the instruction changes (0: none yet)."""
        with self._lock:
            return self._instruction_id

    def assemble(self, now: float) -> Observation:
        """The current observation.

        Raises:
            ObservationUnavailable: no instruction, a camera or arm never seen, or an input
                older than ``max_age`` (the message names which).
            Exception: whatever a lazy image decoder raises (the caller counts it).
        """
        with self._lock:
            instruction, instruction_id = self._instruction, self._instruction_id
            images = dict(self._images)
            arms = dict(self._arms)
        if not instruction:
            raise ObservationUnavailable("no instruction yet")
        missing = [c for c in self.camera_names if c not in images]
        missing += [a for a in self.robot.arms if a not in arms]
        if missing:
            raise ObservationUnavailable(f"no data yet from {missing}")
        stamps = {c: images[c][1] for c in self.camera_names}
        stamps.update({a: arms[a][2] for a in self.robot.arms})
        stale = {name: round(now - s, 3) for name, s in stamps.items()
                 if now - s > self.max_age}
        if stale:
            raise ObservationUnavailable(
                f"stale inputs (age s > {self.max_age}): {stale}")
        proprio = np.zeros(self.robot.dim, dtype=np.float64)
        covered = np.zeros(self.robot.dim, dtype=bool)
        for indices, values, _ in arms.values():
            proprio[indices] = values
            covered[indices] = True
        if not covered.all():
            names = [self.robot.joint_names[i] for i in np.flatnonzero(~covered)]
            raise ObservationUnavailable(f"no arm provides joints {names}")
        decoded = {}
        for camera in self.camera_names:
            image = images[camera][0]
            decoded[camera] = image() if callable(image) else image
        return Observation(images=decoded, proprio=proprio, instruction=instruction,
                           stamp=max(stamps.values()), age=now - min(stamps.values()),
                           instruction_id=instruction_id)


class InferenceTrigger:
    """Decides when the next inference starts.

    * ``on_demand``: when the executor's remaining horizon drops below ``demand_horizon``
      (and right away when the instruction changes);
    * ``fixed_rate``: every ``1 / rate_hz`` seconds;
    * ``once``: one chunk per new instruction.
    """

    def __init__(self, mode: str, demand_horizon: float = 0.6, rate_hz: float = 2.0) -> None:
        if mode not in TRIGGER_MODES:
            raise ValueError(f"trigger mode {mode!r} is not one of {list(TRIGGER_MODES)}")
        if mode == "on_demand" and not demand_horizon > 0:
            raise ValueError(f"demand_horizon must be > 0 s, got {demand_horizon}")
        if mode == "fixed_rate" and not rate_hz > 0:
            raise ValueError(f"inference rate must be > 0 Hz, got {rate_hz}")
        self.mode = mode
        self.demand_horizon = float(demand_horizon)
        self.period = 1.0 / float(rate_hz) if rate_hz > 0 else math.inf
        self._last_start = -math.inf
        self._served_instruction = 0
        self._horizon: float | None = None

    def on_executor_status(self, remaining_horizon: float) -> None:
        self._horizon = float(remaining_horizon)

    def should_start(self, now: float, instruction_id: int, busy: bool) -> bool:
        """True when an inference should start now (never while one is running)."""
        if busy or instruction_id == 0:
            return False
        new_instruction = instruction_id != self._served_instruction
        if self.mode == "once":
            return new_instruction
        if self.mode == "fixed_rate":
            return new_instruction or now - self._last_start >= self.period
        if new_instruction:
            return True
        return self._horizon is not None and self._horizon < self.demand_horizon

    def started(self, now: float, instruction_id: int) -> None:
        """Record that an inference started for ``instruction_id``."""
        self._last_start = now
        self._served_instruction = instruction_id
        # The horizon reported before this chunk lands is stale: wait for a fresh status.
        self._horizon = None

    def finished(self) -> None:
        """The chunk was published: statuses from before its arrival no longer count."""
        self._horizon = None

    def failed(self) -> None:
        """The started inference produced nothing: try again at the next opportunity."""
        self._served_instruction = 0
