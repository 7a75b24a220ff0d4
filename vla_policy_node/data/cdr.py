"""Hand-written CDR readers for the three message types a conversion reads in bulk.

The generic ``rosbags`` deserializer builds a Python object per message (about 30 us for a
JointState) and is the right tool for anything rare. A bag of a 10 s ALOHA episode has 4,000
joint states and 900 camera frames, so these three types are parsed here instead:

* :func:`parse_image` / :func:`parse_compressed_image` read the fixed fields and return the
  pixel or JPEG bytes as a zero-copy view of the message buffer (a memory-mapped bag file);
* :func:`parse_joint_states` reads a whole topic at once: messages with the same layout
  (same names, same sequence lengths: every message of a normal driver) are decoded as one
  (N, J) numpy view, without a Python loop over messages.

Both endiannesses are read. Every length is checked against the buffer, so a truncated or
corrupt message raises :class:`CdrError` naming the field, never returns garbage. The results
match ``rosbags``' deserializer exactly (``test/test_data_cdr.py`` checks it).

Bytes after the last field are ignored, as rclpy's own deserializer does: rclpy's
``serialize_message`` leaves up to 8 (``rosbags`` rejects those messages). Alignment padding
is never read, since Fast CDR leaves whatever was in its buffer there.

CDR (XCDR1) layout reminder: 4 bytes of encapsulation (``00 01`` little endian, ``00 00`` big
endian), then the fields in order, each aligned to its own size *relative to the end of the
encapsulation*; a string is a uint32 length (terminating NUL included) and the bytes; a
sequence is a uint32 count and the elements, aligned to the element size only when non-empty.
"""

from __future__ import annotations

from dataclasses import dataclass
import struct
from typing import Any, NamedTuple, Sequence

import numpy as np

_ORIGIN = 4  # alignment is relative to the end of the encapsulation header


class CdrError(ValueError):
    """A serialized message that is truncated or inconsistent (the message says where)."""


def _little_endian(raw: Any) -> bool:
    if len(raw) < 4 or raw[0] != 0 or raw[1] not in (0, 1):
        raise CdrError(f"invalid or unsupported CDR encapsulation {bytes(raw[:4]).hex()!r}")
    return raw[1] == 1


class _Cursor:
    """Reads fields in order from one CDR buffer (``bytes``, ``memoryview`` or ``mmap``)."""

    __slots__ = ("raw", "pos", "end", "u32", "i32", "what", "spans")

    def __init__(self, raw: Any, what: str) -> None:
        self.raw = raw
        self.end = len(raw)
        little = _little_endian(raw)
        self.u32 = struct.Struct("<I" if little else ">I").unpack_from
        self.i32 = struct.Struct("<i" if little else ">i").unpack_from
        self.pos = _ORIGIN
        self.what = what
        self.spans: list[tuple[int, int]] | None = None  # (start, stop) of the bytes read

    def need(self, size: int, field: str, record: bool = True) -> int:
        """Offset of ``size`` bytes of ``field`` at the cursor; advances past them."""
        pos = self.pos
        if size < 0 or pos + size > self.end:
            raise CdrError(f"truncated {self.what}: {field} needs {size} bytes at offset "
                           f"{pos}, the message has {self.end}")
        self.pos = pos + size
        if record and self.spans is not None:
            self.spans.append((pos, pos + size))
        return pos

    def align(self, size: int) -> None:
        self.pos = _ORIGIN + ((self.pos - _ORIGIN + size - 1) & -size)

    def uint32(self, field: str) -> int:
        self.align(4)
        return self.u32(self.raw, self.need(4, field))[0]

    def int32(self, field: str) -> int:
        self.align(4)
        return self.i32(self.raw, self.need(4, field))[0]

    def uint8(self, field: str) -> int:
        return self.raw[self.need(1, field)]

    def string(self, field: str) -> str:
        length = self.uint32(field)
        if length < 1:
            raise CdrError(f"{self.what}: string {field} has length 0 (no terminating NUL)")
        start = self.need(length, field)
        if self.raw[start + length - 1] != 0:
            raise CdrError(f"{self.what}: string {field} is not NUL-terminated")
        try:
            return bytes(self.raw[start:start + length - 1]).decode()
        except UnicodeDecodeError as exc:
            raise CdrError(f"{self.what}: string {field} is not UTF-8: {exc}") from None

    def octets(self, field: str) -> memoryview:
        """A ``uint8[]`` sequence as a view of the buffer (no copy)."""
        length = self.uint32(field)
        start = self.need(length, field)
        return memoryview(self.raw)[start:start + length]


class Stamp(NamedTuple):
    """``builtin_interfaces/Time``."""

    sec: int
    nanosec: int


class Header(NamedTuple):
    """``std_msgs/Header``."""

    stamp: Stamp
    frame_id: str


def _header(cur: _Cursor) -> Header:
    sec = cur.int32("header.stamp.sec")
    nanosec = cur.uint32("header.stamp.nanosec")
    return Header(Stamp(sec, nanosec), cur.string("header.frame_id"))


class ImageMessage(NamedTuple):
    """``sensor_msgs/Image`` as :func:`vla_policy_node.data.images.decode_image` reads it.

    NamedTuples rather than dataclasses: one is built per image, and a tuple costs a third.

    ``data`` is a read-only view of the serialized buffer: keep the buffer alive while the
    message (or an array decoded from it) is in use.
    """

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


class CompressedImageMessage(NamedTuple):
    """``sensor_msgs/CompressedImage``; ``data`` is a view of the buffer, as for Image."""

    header: Header
    format: str
    data: memoryview


def parse_image(raw: Any) -> ImageMessage:
    """Read a serialized ``sensor_msgs/Image`` without copying its pixels.

    Args:
        raw: the CDR bytes (``bytes``, ``memoryview`` or ``mmap`` slice).

    Raises:
        CdrError: bad encapsulation, truncated message, bad string.
    """
    cur = _Cursor(raw, "sensor_msgs/Image")
    header = _header(cur)
    height = cur.uint32("height")
    width = cur.uint32("width")
    encoding = cur.string("encoding")
    is_bigendian = cur.uint8("is_bigendian")
    step = cur.uint32("step")
    data = cur.octets("data")
    return ImageMessage(header, height, width, encoding, is_bigendian, step, data)


def parse_compressed_image(raw: Any) -> CompressedImageMessage:
    """Read a serialized ``sensor_msgs/CompressedImage`` without copying its data.

    Raises:
        CdrError: bad encapsulation, truncated message, bad string.
    """
    cur = _Cursor(raw, "sensor_msgs/CompressedImage")
    header = _header(cur)
    fmt = cur.string("format")
    data = cur.octets("data")
    return CompressedImageMessage(header, fmt, data)


def header_stamps(raws: Sequence[Any]) -> np.ndarray:
    """(N,) int64 header stamps (ns) of messages whose first field is a ``std_msgs/Header``.

    0 where a message has a zero stamp (a publisher that never sets it).

    Raises:
        CdrError: a message shorter than a header stamp, or a bad encapsulation.
    """
    out = np.empty(len(raws), np.int64)
    le = struct.Struct("<iI").unpack_from
    be = struct.Struct(">iI").unpack_from
    for i, raw in enumerate(raws):
        if len(raw) < 12:
            raise CdrError(f"truncated message: {len(raw)} bytes, no header stamp")
        sec, nanosec = (le if _little_endian(raw) else be)(raw, 4)
        out[i] = sec * 1_000_000_000 + nanosec
    return out


# ---- JointState, a topic at a time -----------------------------------------------------------

@dataclass(frozen=True)
class _JointLayout:
    """Where the fields of one JointState layout lie; shared by all messages that match."""

    little: bool
    size: int
    names: tuple[str, ...]
    key: np.ndarray                   # (K,) offsets of the bytes two messages must share:
    #                                   frame id, names, sequence counts (not the padding)
    counts: tuple[int, int, int]
    offsets: tuple[int, int, int]     # position, velocity, effort data
    stamp: int                        # offset of header.stamp (sec, nanosec)


def _joint_layout(raw: Any) -> _JointLayout:
    cur = _Cursor(raw, "sensor_msgs/JointState")
    little = raw[1] == 1
    cur.int32("header.stamp.sec")
    cur.uint32("header.stamp.nanosec")
    cur.spans = [(0, 2)]  # from here on, what is read defines the layout
    cur.string("header.frame_id")
    n_names = cur.uint32("name count")
    if n_names > (cur.end - cur.pos) // 5:
        raise CdrError(f"truncated sensor_msgs/JointState: {n_names} names cannot fit")
    names = tuple(cur.string(f"name[{i}]") for i in range(n_names))
    counts, offsets = [], []
    for field in ("position", "velocity", "effort"):
        count = cur.uint32(f"{field} count")
        if count:
            cur.align(8)
        offsets.append(cur.need(8 * count, field, record=False))
        counts.append(count)
    key = np.concatenate([np.arange(a, b) for a, b in cur.spans])
    return _JointLayout(little, cur.end, names, key, tuple(counts), tuple(offsets), 4)


@dataclass
class JointStates:
    """The JointState messages of one topic, columns in the order the caller asked for.

    Attributes:
        stamps: (N,) int64 header stamps, ns (0: not set).
        position: (N, J) float64.
        velocity / effort: (N, J) float64, or None when a message has none (or not one per
            name).
    """

    stamps: np.ndarray
    position: np.ndarray
    velocity: np.ndarray | None
    effort: np.ndarray | None


def parse_joint_states(raws: Sequence[Any], joints: Sequence[str],
                       what: str = "sensor_msgs/JointState", max_layouts: int = 16
                       ) -> JointStates:
    """Decode N serialized ``sensor_msgs/JointState`` at once, keeping the columns ``joints``.

    Messages are grouped by layout (byte size, names, sequence lengths): the first unread
    message is parsed field by field, every other message with identical bytes from the frame
    id to the position count and the same velocity/effort counts is read as a row of one
    (N, size) byte matrix. A driver that always publishes the same names needs one layout.

    Args:
        raws: the CDR buffers, in the order the rows should have.
        joints: J joint names to extract (by name, in this order).
        what: the topic, for error messages.
        max_layouts: more distinct layouts than this means the names change every message;
            the remaining messages are then parsed one by one (correct, slower).

    Raises:
        CdrError: truncated or inconsistent message, a joint missing from a message's names,
            or fewer positions than names.
    """
    n, n_joints = len(raws), len(joints)
    stamps = np.zeros(n, np.int64)
    position = np.empty((n, n_joints))
    velocity: np.ndarray | None = np.empty((n, n_joints))
    effort: np.ndarray | None = np.empty((n, n_joints))
    sizes = np.fromiter((len(r) for r in raws), np.int64, n)
    pending = np.arange(n)
    layouts = 0
    while len(pending):
        first = int(pending[0])
        layout = _joint_layout(raws[first])
        missing = [j for j in joints if j not in layout.names]
        if missing:
            raise CdrError(f"{what}: joints {missing} not in the message's names "
                           f"{list(layout.names)}")
        if layout.counts[0] != len(layout.names):
            raise CdrError(f"{what}: {len(layout.names)} names but {layout.counts[0]} "
                           f"positions")
        columns = np.array([layout.names.index(j) for j in joints], np.int64)
        layouts += 1
        if layouts > max_layouts:
            members = pending[:1]
            block = np.frombuffer(bytes(raws[first]), np.uint8).reshape(1, layout.size)
        else:
            same = pending[sizes[pending] == layout.size]
            # One (M, size) matrix of the candidates: a single copy of a few hundred bytes
            # per message, then every check and every read is a numpy slice.
            block = np.frombuffer(b"".join([raws[i] for i in same]), np.uint8).reshape(
                len(same), layout.size)
            match = _match(block, layout)
            members, block = same[match], block[match]
        order = "<" if layout.little else ">"
        stamp_view = block[:, layout.stamp:layout.stamp + 8]
        sec = stamp_view[:, :4].copy().view(order + "i4")[:, 0].astype(np.int64)
        nanosec = stamp_view[:, 4:].copy().view(order + "u4")[:, 0].astype(np.int64)
        stamps[members] = sec * 1_000_000_000 + nanosec
        for k, target in enumerate((position, velocity, effort)):
            if target is None:
                continue
            if layout.counts[k] != len(layout.names):
                if k == 1:
                    velocity = None
                elif k == 2:
                    effort = None
                continue
            start = layout.offsets[k]
            values = block[:, start:start + 8 * layout.counts[k]].copy().view(order + "f8")
            target[members] = values[:, columns]
        pending = np.setdiff1d(pending, members, assume_unique=True)
    return JointStates(stamps, position, velocity, effort)


def _match(block: np.ndarray, layout: _JointLayout) -> np.ndarray:
    """(M,) bool: rows of ``block`` with the layout of row 0 (same names and counts)."""
    key = block[:, layout.key]
    return np.all(key == key[0], axis=1)
