"""rosbag2 reading and writing without ROS, through the ``rosbags`` library.

Bags written by ``vla-record`` and by ``ros2 bag record`` (sqlite3 or mcap) read the same way.
Types come from the Jazzy type store, our custom packages (``interbotix_xs_msgs``,
``vla_msgs``) and, for anything else, the definitions embedded in the bag itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import struct
from typing import Any, Iterator, Sequence

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.store import Typestore

from vla_policy_node.config import package_share_dir

logger = logging.getLogger(__name__)

#: custom_data keys of our episodes (metadata.yaml), also written as topics.
META_INSTRUCTION = "vla.instruction"
META_SUCCESS = "vla.success"
META_EPISODE = "vla.episode"

# The stand-in interbotix_xs_msgs (the real package has more types; these are the ones used).
INTERBOTIX_MSGS = {
    "interbotix_xs_msgs/msg/JointGroupCommand": "string name\nfloat32[] cmd\n",
    "interbotix_xs_msgs/msg/JointSingleCommand": "string name\nfloat32 cmd\n",
}


class BagError(RuntimeError):
    """A bag that cannot be read (missing, truncated, corrupt, unknown storage)."""


def _vla_msgs_dir() -> Path | None:
    candidates = [package_share_dir() / "vla_msgs" / "msg"]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory("vla_msgs")) / "msg")
    except Exception:  # noqa: BLE001 - not on a ROS install: the source tree is enough
        pass
    return next((c for c in candidates if c.is_dir()), None)


def make_typestore() -> Typestore:
    """The Jazzy type store plus ``interbotix_xs_msgs`` and ``vla_msgs`` (from their .msg)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for name, text in INTERBOTIX_MSGS.items():
        types.update(get_types_from_msg(text, name))
    msg_dir = _vla_msgs_dir()
    if msg_dir is None:
        logger.warning("vla_msgs/msg not found: vla_msgs types only from bag definitions")
    else:
        for path in sorted(msg_dir.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"vla_msgs/msg/{path.stem}"))
    store.register(types)
    return store


def header_stamp_ns(raw: bytes | memoryview) -> int | None:
    """Header stamp (ns) of a serialized message whose first field is ``std_msgs/Header``.

    Reads 8 bytes instead of deserializing: an image's stamp costs nothing this way.
    Returns None for a zero stamp (publishers that never set it) or a too short buffer.
    """
    if len(raw) < 12:
        return None
    little = raw[1] == 1  # CDR encapsulation: 0x0001 little endian, 0x0000 big endian
    sec, nanosec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    if sec == 0 and nanosec == 0:
        return None
    return sec * 1_000_000_000 + nanosec


@dataclass
class TopicInfo:
    topic: str
    msgtype: str
    count: int


@dataclass
class BagContents:
    """An opened bag: its topics and metadata (``custom_data``)."""

    path: Path
    topics: dict[str, TopicInfo]
    custom_data: dict[str, str] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0


class BagReader:
    """Read one rosbag2 (a directory with metadata.yaml, or a bare .mcap / .db3 file).

    A bag directory whose ``metadata.yaml`` is missing (``ros2 bag record`` killed hard) is
    opened through its single storage file. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, typestore: Typestore | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        target = self.path
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            files = sorted(self.path.glob("*.mcap")) + sorted(self.path.glob("*.db3"))
            if len(files) != 1:
                raise BagError(
                    f"{self.path}: no metadata.yaml and {len(files)} storage files "
                    f"(run `ros2 bag reindex` on it)")
            logger.warning("%s has no metadata.yaml; reading %s directly", self.path,
                           files[0].name)
            target = files[0]
        self.typestore = typestore or make_typestore()
        try:
            self._reader = Reader(target)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds; all mean "bad bag"
            raise BagError(f"cannot open bag {self.path}: {type(exc).__name__}: {exc}") from exc
        self._register_embedded_types()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    def _register_embedded_types(self) -> None:
        known = set(self.typestore.fielddefs)
        types: dict[str, Any] = {}
        for conn in self._reader.connections:
            if conn.msgtype in known or not conn.msgdef.data:
                continue
            try:
                if conn.msgdef.format.name == "MSG":
                    types.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            except Exception as exc:  # noqa: BLE001 - an odd definition only loses that topic
                logger.warning("%s: cannot parse the definition of %s: %s", self.path,
                               conn.msgtype, exc)
        if types:
            self.typestore.register({k: v for k, v in types.items() if k not in known})

    def contents(self) -> BagContents:
        topics: dict[str, TopicInfo] = {}
        for conn in self._reader.connections:
            info = topics.setdefault(conn.topic, TopicInfo(conn.topic, conn.msgtype, 0))
            info.count += conn.msgcount
        custom: dict[str, str] = {}
        metadata = getattr(self._reader.storage, "metadata", None)
        if metadata is not None and getattr(metadata, "custom", None):
            custom = {str(k): str(v) for k, v in metadata.custom.items()}
        return BagContents(self.path, topics, custom,
                           self._reader.start_time if self._reader.message_count else 0,
                           self._reader.end_time if self._reader.message_count else 0)

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """Yield ``(topic, msgtype, log_time_ns, raw_cdr)`` of ``topics`` in bag time order.

        Raises:
            BagError: the storage is corrupt or truncated (raised where the damage starts).
        """
        connections = [c for c in self._reader.connections if c.topic in set(topics)]
        if not connections:
            return
        try:
            for conn, stamp, raw in self._reader.messages(connections=connections):
                yield conn.topic, conn.msgtype, stamp, raw
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure means a damaged bag
            raise BagError(
                f"bag {self.path} is damaged: {type(exc).__name__}: {exc}") from exc

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        try:
            return self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"{self.path}: cannot deserialize a {msgtype}: {exc}") from exc


class BagWriter:
    """Write one rosbag2 episode (mcap or sqlite3) from serialized or rosbags messages.

    ``write_raw`` takes CDR bytes (e.g. from an rclpy subscription with ``raw=True``);
    ``write`` serializes a rosbags message. ``custom_data`` ends up in metadata.yaml on close.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap",
                 typestore: Typestore | None = None) -> None:
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be mcap or sqlite3, got {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self.typestore = typestore or make_typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close()

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with a ROS 2 type name (``sensor_msgs/msg/Image``)."""
        if topic in self._connections:
            return
        if msgtype not in self.typestore.fielddefs:
            raise ValueError(f"unknown message type {msgtype!r} for topic {topic}")
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore)
        self.counts[topic] = 0

    def write_raw(self, topic: str, stamp_ns: int, raw: bytes | memoryview) -> None:
        self._writer.write(self._connections[topic], int(stamp_ns), raw)
        self.counts[topic] += 1

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        raw = self.typestore.serialize_cdr(msg, self._connections[topic].msgtype)
        self.write_raw(topic, stamp_ns, raw)

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, str(value))

    def close(self) -> None:
        if self._writer.storage is not None:
            self._writer.close()
