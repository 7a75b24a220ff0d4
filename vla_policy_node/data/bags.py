"""rosbag2 reading and writing without ROS, through the ``rosbags`` library.

Bags written by ``vla-record`` and by ``ros2 bag record`` (sqlite3 or mcap) read the same way.
Types come from the Jazzy type store, our custom packages (``interbotix_xs_msgs``,
``vla_msgs``) and, for anything else, the definitions embedded in the bag itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import functools
import logging
import mmap
import os
from pathlib import Path, PurePath
import sqlite3
import struct
from typing import Any, Collection, Iterator, Sequence
import zlib

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import DECOMPRESSORS, McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
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


@functools.lru_cache(maxsize=1)
def _shared_typestore() -> Typestore:
    # Parsing the .msg files costs ~15 ms, a tenth of converting a 10 s episode: readers that
    # need no more types than these share one store (see BagReader._register_embedded_types).
    return make_typestore()


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


@dataclass
class _Metadata:
    """What :class:`BagReader` needs from metadata.yaml when it reads the storage itself."""

    storage: str
    paths: list[Path]
    contents: BagContents


def _read_metadata(bag: Path, typestore: Typestore) -> _Metadata | None:
    """metadata.yaml of a plain bag (mcap/sqlite3, CDR, no compression, known types).

    None for anything else, so that rosbags opens (and judges) the bag. rosbags parses the
    file with pure-Python ruamel.yaml (~7 ms, as much as the rest of opening); PyYAML's C
    loader takes 0.5 ms.
    """
    try:
        info = yaml.load((bag / "metadata.yaml").read_text(),
                         Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        info = info["rosbag2_bagfile_information"]
        if (int(info["version"]) > 9 or info["storage_identifier"] not in ("mcap", "sqlite3")
                or str(info.get("compression_mode") or "none").lower() != "none"):
            return None
        paths = [bag / PurePath(name).name for name in info["relative_file_paths"]]
        if not paths or not all(p.is_file() for p in paths):
            return None
        topics: dict[str, TopicInfo] = {}
        for entry in info["topics_with_message_count"]:
            meta = entry["topic_metadata"]
            if meta["serialization_format"] != "cdr" or meta["type"] not in (
                    typestore.fielddefs):
                return None
            topic = topics.setdefault(meta["name"], TopicInfo(meta["name"], meta["type"], 0))
            topic.count += int(entry["message_count"])
        if info["storage_identifier"] == "mcap" and not all(map(_mcap_looks_whole, paths)):
            return None
        count = int(info["message_count"])
        start = int(info["starting_time"]["nanoseconds_since_epoch"])
        custom = {str(k): str(v) for k, v in (info.get("custom_data") or {}).items()}
        end = start + int(info["duration"]["nanoseconds"]) + 1  # as rosbags reports it
        return _Metadata(info["storage_identifier"], paths, BagContents(
            bag, topics, custom, start if count else 0, end if count else 0))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _mcap_looks_whole(path: Path) -> bool:
    """Magic at both ends and a footer: a file rosbags would open (a cut file is not)."""
    size = path.stat().st_size
    if size < 2 * len(_MCAP_MAGIC) + 9 + 29:
        return False
    with open(path, "rb") as f:
        head = f.read(len(_MCAP_MAGIC))
        f.seek(size - len(_MCAP_MAGIC) - 29)
        tail = f.read()
    return head == _MCAP_MAGIC and tail[-len(_MCAP_MAGIC):] == _MCAP_MAGIC and tail[0] == 0x02


class BagReader:
    """Read one rosbag2 (a directory with metadata.yaml, or a bare .mcap / .db3 file).

    A bag directory whose ``metadata.yaml`` is missing (``ros2 bag record`` killed hard) is
    opened through its single storage file. Use as a context manager.

    Plain bags (mcap or sqlite3 with CDR messages of known types, no compression) are read
    without ``rosbags``: metadata.yaml through PyYAML and the storage through :meth:`index`
    and :meth:`fetch`. ``rosbags`` opens everything else, and serves :meth:`messages`.
    """

    def __init__(self, path: str | os.PathLike, typestore: Typestore | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        self._target = self.path
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            files = sorted(self.path.glob("*.mcap")) + sorted(self.path.glob("*.db3"))
            if len(files) != 1:
                raise BagError(
                    f"{self.path}: no metadata.yaml and {len(files)} storage files "
                    f"(run `ros2 bag reindex` on it)")
            logger.warning("%s has no metadata.yaml; reading %s directly", self.path,
                           files[0].name)
            self._target = files[0]
        self.typestore = typestore or _shared_typestore()
        self._own_typestore = typestore is not None
        self._store: _Store | None = None
        self._contents: BagContents | None = None
        self._reader: Reader | None = None
        self._metadata = (_read_metadata(self.path, self.typestore)
                          if self._target.is_dir() else None)
        if self._metadata is None:
            self._open_rosbags()
        else:
            self._contents = self._metadata.contents

    def _open_rosbags(self) -> Reader:
        if self._reader is None:
            try:
                reader = Reader(self._target)
                reader.open()
            except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds: a bad bag
                raise BagError(
                    f"cannot open bag {self.path}: {type(exc).__name__}: {exc}") from exc
            self._reader = reader
            self._register_embedded_types()
        return self._reader

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._reader is not None and self._reader.is_open:
            self._reader.close()

    def _register_embedded_types(self) -> None:
        assert self._reader is not None
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
            if not self._own_typestore:
                # Never add a bag's own definitions to the shared store: the next bag may
                # define the same name differently.
                self.typestore = make_typestore()
                self._own_typestore = True
            self.typestore.register({k: v for k, v in types.items() if k not in known})

    def contents(self) -> BagContents:
        if self._contents is not None:
            return self._contents
        reader = self._open_rosbags()
        topics: dict[str, TopicInfo] = {}
        for conn in reader.connections:
            info = topics.setdefault(conn.topic, TopicInfo(conn.topic, conn.msgtype, 0))
            info.count += conn.msgcount
        custom: dict[str, str] = {}
        metadata = getattr(reader.storage, "metadata", None)
        if metadata is not None and getattr(metadata, "custom", None):
            custom = {str(k): str(v) for k, v in metadata.custom.items()}
        self._contents = BagContents(
            self.path, topics, custom,
            reader.start_time if reader.message_count else 0,
            reader.end_time if reader.message_count else 0)
        return self._contents

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """Yield ``(topic, msgtype, log_time_ns, raw_cdr)`` of ``topics`` in bag time order.

        Raises:
            BagError: the storage is corrupt or truncated (raised where the damage starts).
        """
        reader = self._open_rosbags()
        connections = [c for c in reader.connections if c.topic in set(topics)]
        if not connections:
            return
        try:
            for conn, stamp, raw in reader.messages(connections=connections):
                yield conn.topic, conn.msgtype, stamp, raw
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure means a damaged bag
            raise BagError(
                f"bag {self.path} is damaged: {type(exc).__name__}: {exc}") from exc

    def deserialize(self, raw: bytes | memoryview, msgtype: str) -> Any:
        try:
            return self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"{self.path}: cannot deserialize a {msgtype}: {exc}") from exc

    # ---- indexed access: read what is needed, once -------------------------------------------

    def index(self, topics: Sequence[str], load: Collection[str] = ()
              ) -> dict[str, TopicMessages]:
        """Index the messages of ``topics`` without reading (most of) their data.

        Rows are numbered per topic in bag order (log time; ties in storage order), the order
        :meth:`messages` yields them in. mcap files are memory-mapped and scanned record by
        record; sqlite3 files are queried for ids and times. Bags this does not cover
        (message-compressed bags) fall back to one pass of :meth:`messages`.

        Args:
            topics: topics to index (absent topics are left out of the result).
            load: topics whose data is wanted for every message (``TopicMessages.payloads``):
                small messages such as joint states, read in the same pass.

        Raises:
            BagError: the storage is damaged (truncated record, bad chunk, checksum).
        """
        wanted = [t for t in dict.fromkeys(topics) if t in self.contents().topics]
        msgtypes = {t: self.contents().topics[t].msgtype for t in wanted}
        self._store = self._store or self._open_store()
        with self._storage_errors():
            return self._store.index(wanted, msgtypes, set(load))

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]],
              head: int | None = None) -> Iterator[tuple[TopicMessages, int, Any]]:
        """Yield ``(topic_messages, row, raw_cdr)`` for the requested rows of each topic.

        The order is the storage order (each compressed chunk is decompressed once), not the
        order of ``requests``. ``raw_cdr`` is a read-only buffer (a view of the mapped file
        where possible): use it before the reader closes.

        Args:
            requests: (index of a topic, (K,) int row numbers) pairs.
            head: read only the first ``head`` bytes of each message (e.g. 12 for a stamp).

        Raises:
            BagError: the storage is damaged.
        """
        store = self._store or self._open_store()
        with self._storage_errors():
            yield from store.fetch(requests, head)

    def _open_store(self) -> "_Store":
        if self._metadata is not None:
            paths, storage = self._metadata.paths, self._metadata.storage
        else:
            rosbags = self._open_rosbags().storage
            parts = list(getattr(rosbags, "storages", [rosbags]))
            compressed = getattr(getattr(rosbags, "metadata", None), "compression_mode", None)
            paths = [Path(p.path) for p in parts]  # 'file' compression: decompressed copies
            storage = ("mcap" if parts and all(isinstance(p, McapReader) for p in parts) else
                       "sqlite3" if parts and all(isinstance(p, Sqlite3Reader) for p in parts)
                       else "")
            if compressed == "message":
                storage = ""
        if storage == "mcap":
            self._store = _McapStore(self, paths)
        elif storage == "sqlite3":
            self._store = _SqliteStore(self, paths)
        else:
            self._store = _GenericStore(self)
        return self._store

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """Storage failures (bad offsets, sqlite errors) become a BagError naming the bag."""
        try:
            yield
        except BagError:
            raise
        except (OSError, ValueError, IndexError, struct.error, sqlite3.Error,
                RuntimeError) as exc:
            raise BagError(
                f"bag {self.path} is damaged: {type(exc).__name__}: {exc}") from exc


@dataclass
class TopicMessages:
    """The messages of one topic, indexed by :meth:`BagReader.index`.

    Attributes:
        topic, msgtype: the topic and its ROS 2 type name.
        log_ns: (N,) int64 receive (log) times, ns, in row order.
        payloads: the N raw CDR buffers, for topics indexed with ``load``; None otherwise.
        locators: where each row lives in the storage (backend-specific, (N, k) int64).
    """

    topic: str
    msgtype: str
    log_ns: np.ndarray
    payloads: list[Any] | None = None
    locators: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.log_ns)


class _Store:
    """Indexed access to the storage files of one bag (see :meth:`BagReader.index`)."""

    def index(self, topics: Sequence[str], msgtypes: dict[str, str], load: set[str]
              ) -> dict[str, TopicMessages]:
        raise NotImplementedError

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]], head: int | None
              ) -> Iterator[tuple[TopicMessages, int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _sorted_topic(topic: str, msgtype: str, width: int, log_ns: list[int],
                  locators: list[Any], payloads: list[Any] | None) -> TopicMessages:
    """Rows in log time order, ties in storage order (a stable sort, as rosbags reads)."""
    times = np.asarray(log_ns, np.int64)
    order = np.argsort(times, kind="stable")
    return TopicMessages(
        topic, msgtype, times[order],
        None if payloads is None else [payloads[i] for i in order.tolist()],
        np.asarray(locators, np.int64).reshape(len(times), width)[order])


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_RECORD = struct.Struct("<BQ")           # opcode, record length
_MESSAGE = struct.Struct("<HIQ")         # channel id, sequence, log time (publish time follows)
_CHUNK = struct.Struct("<QQQII")         # start, end, uncompressed size, crc, compression length
_CHANNEL = struct.Struct("<HHI")         # channel id, schema id, topic length
_OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 0x04, 0x05, 0x06, 0x0F


class _McapStore(_Store):
    """mcap files, memory-mapped: messages in uncompressed chunks are never copied.

    Locators are ``(file, chunk, start, end)``: ``chunk`` -1 means ``start:end`` are offsets in
    the mapped file, otherwise offsets in that (compressed) chunk's decompressed records.
    """

    def __init__(self, owner: BagReader, paths: list[Path]) -> None:
        self.owner = owner
        self.paths = paths
        self.maps: list[mmap.mmap] = []
        for path in paths:
            with open(path, "rb") as f:
                self.maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        self.chunks: list[tuple[int, int, int, str, int, int]] = []
        self._cached: tuple[int, bytes] | None = None

    def close(self) -> None:
        self._cached = None
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:
                pass  # a view is still alive somewhere: the map closes when it is freed
        self.maps = []

    def _damaged(self, f: int, what: str) -> BagError:
        return BagError(f"bag {self.owner.path} is damaged: {self.paths[f].name}: {what}")

    def _chunk_records(self, f: int, chunk: int) -> bytes:
        """The decompressed records of chunk ``chunk`` (cached: fetch reads in chunk order)."""
        if self._cached is not None and self._cached[0] == chunk:
            return self._cached[1]
        f, start, end, compression, size, crc = self.chunks[chunk]
        decompress = DECOMPRESSORS.get(compression)
        if decompress is None:
            raise self._damaged(f, f"unsupported chunk compression {compression!r}")
        try:
            records = decompress(self.maps[f][start:end], size)
        except Exception as exc:  # noqa: BLE001 - lz4/zstd raise their own types
            raise self._damaged(f, f"chunk at {start} does not decompress: {exc}") from None
        if len(records) != size:
            raise self._damaged(f, f"chunk at {start}: {len(records)} bytes, expected {size}")
        if crc and zlib.crc32(records) != crc:
            raise self._damaged(f, f"chunk at {start}: checksum mismatch")
        self._cached = (chunk, records)
        return records

    def index(self, topics: Sequence[str], msgtypes: dict[str, str], load: set[str]
              ) -> dict[str, TopicMessages]:
        found: dict[str, tuple[list[int], list[tuple[int, int, int, int]], list[Any] | None]] = {
            t: ([], [], [] if t in load else None) for t in topics}
        self.chunks = []
        for f, mm in enumerate(self.maps):
            data_start, data_end, summary_end = self._sections(f, mm)
            # Channel id -> what to collect. The summary lists every channel; a file without
            # one declares each channel before its first message (the mcap rule).
            wanted: dict[int, Any] = {}
            self._scan(f, mm, data_end, summary_end, found, wanted, summary=True)
            self._scan(f, mm, data_start, data_end, found, wanted, summary=False)
        out = {}
        for t in topics:
            try:
                out[t] = _sorted_topic(t, msgtypes[t], 4, *found[t])
            except OverflowError:  # log times are read unsigned: only damage gets here
                times, locators, _ = found[t]
                row = next(i for i, x in enumerate(times) if x >= 1 << 63)
                f, chunk, start, _ = locators[row]
                where = f"offset {start - 31}" if chunk < 0 else f"chunk {chunk}"
                raise self._damaged(f, f"message on {t} at {where}: log time {times[row]} "
                                       f">= 2**63") from None
        return out

    def _sections(self, f: int, mm: mmap.mmap) -> tuple[int, int, int]:
        """Offsets where the data section starts and ends, and where the summary ends."""
        size = len(mm)
        footer = size - len(_MCAP_MAGIC) - 29
        if footer < len(_MCAP_MAGIC) + 9 or mm[footer] != 0x02:
            raise self._damaged(f, "no mcap footer (file end magic is invalid)")
        _, header_length = _RECORD.unpack_from(mm, len(_MCAP_MAGIC))
        data_start = len(_MCAP_MAGIC) + 9 + header_length
        (summary_start,) = struct.unpack_from("<Q", mm, footer + 9)
        if summary_start and not data_start <= summary_start <= footer:
            raise self._damaged(f, f"summary offset {summary_start} outside the file")
        return data_start, summary_start or footer, footer

    def _scan(self, f: int, mm: mmap.mmap, pos: int, stop: int, found: dict[str, Any],
              wanted: dict[int, Any], summary: bool) -> None:
        view = memoryview(mm)
        while pos < stop:
            if pos + 9 > stop:
                raise self._damaged(f, f"truncated record at offset {pos}")
            op, length = _RECORD.unpack_from(mm, pos)
            body, end = pos + 9, pos + 9 + length
            if end > stop:
                raise self._damaged(f, f"truncated record at offset {pos}: {length} bytes "
                                       f"announced, {stop - body} left")
            if op == _OP_CHANNEL:
                self._channel(mm, body, end, f, found, wanted)
            elif summary:
                pass  # schemas, chunk indexes, statistics: nothing needed here
            elif op == _OP_MESSAGE:
                self._message(view, body, end, f, -1, wanted, f"offset {pos}")
            elif op == _OP_CHUNK:
                self._chunk(f, mm, view, body, end, found, wanted)
            elif op == _OP_DATA_END:
                break
            pos = end

    def _channel(self, buf: Any, body: int, end: int, f: int, found: dict[str, Any],
                 wanted: dict[int, Any]) -> None:
        if end - body < 8:
            raise self._damaged(f, f"channel record of {end - body} bytes")
        cid, _, length = _CHANNEL.unpack_from(buf, body)
        if body + 8 + length > end:
            raise self._damaged(f, f"channel record {cid}: topic runs past the record")
        topic = bytes(buf[body + 8:body + 8 + length]).decode(errors="replace")
        if topic in found:
            wanted[cid] = found[topic]

    def _message(self, buf: Any, body: int, end: int, f: int, chunk: int,
                 wanted: dict[int, Any], where: str) -> None:
        if end - body < 22:
            raise self._damaged(f, f"message record of {end - body} bytes at {where}")
        cid, _, log_time = _MESSAGE.unpack_from(buf, body)
        target = wanted.get(cid)
        if target is None:
            return
        times, locators, payloads = target
        times.append(log_time)
        locators.append((f, chunk, body + 22, end))
        if payloads is not None:
            # A view of the map costs nothing; a compressed chunk's records are not kept.
            payloads.append(buf[body + 22:end] if chunk < 0 else bytes(buf[body + 22:end]))

    def _chunk(self, f: int, mm: mmap.mmap, view: memoryview, body: int, end: int,
               found: dict[str, Any], wanted: dict[int, Any]) -> None:
        if end - body < _CHUNK.size + 8:
            raise self._damaged(f, f"chunk record of {end - body} bytes at {body - 9}")
        _, _, size, crc, name_length = _CHUNK.unpack_from(mm, body)
        name_end = body + _CHUNK.size + name_length
        if name_end + 8 > end:
            raise self._damaged(f, f"chunk at {body - 9}: bad compression name")
        compression = bytes(mm[body + _CHUNK.size:name_end]).decode(errors="replace")
        (records_length,) = struct.unpack_from("<Q", mm, name_end)
        start = name_end + 8
        if start + records_length > end:
            raise self._damaged(f, f"chunk at {body - 9}: records exceed the chunk record")
        if compression == "":
            if records_length != size:
                raise self._damaged(f, f"chunk at {body - 9}: {records_length} bytes of "
                                       f"records, {size} announced")
            if crc and zlib.crc32(view[start:start + size]) != crc:
                raise self._damaged(f, f"chunk at {body - 9}: checksum mismatch")
            buf, base, chunk = view, start, -1
        else:
            self.chunks.append((f, start, start + records_length, compression, size, crc))
            chunk = len(self.chunks) - 1
            buf, base = memoryview(self._chunk_records(f, chunk)), 0
        pos, stop = base, base + size
        while pos < stop:
            if pos + 9 > stop:
                raise self._damaged(f, f"chunk at {body - 9}: truncated record")
            op, length = _RECORD.unpack_from(buf, pos)
            rec_end = pos + 9 + length
            if rec_end > stop:
                raise self._damaged(f, f"chunk at {body - 9}: truncated record at {pos}")
            if op == _OP_MESSAGE:
                self._message(buf, pos + 9, rec_end, f, chunk, wanted, f"chunk {body - 9}")
            elif op == _OP_CHANNEL:
                self._channel(buf, pos + 9, rec_end, f, found, wanted)
            pos = rec_end
        if chunk >= 0:
            self._cached = None  # the index does not keep decompressed chunks alive

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]], head: int | None
              ) -> Iterator[tuple[TopicMessages, int, Any]]:
        items = [(loc[0], loc[1], loc[2], loc[3], r, int(row))
                 for r, (tm, rows) in enumerate(requests)
                 for row, loc in zip(np.asarray(rows).tolist(), tm.locators[rows].tolist())]
        items.sort()
        views = [memoryview(mm) for mm in self.maps]
        try:
            for f, chunk, start, end, r, row in items:
                if head is not None:
                    end = min(end, start + head)
                if chunk < 0:
                    yield requests[r][0], row, views[f][start:end]
                else:
                    yield requests[r][0], row, memoryview(self._chunk_records(f, chunk))[
                        start:end]
        finally:
            for view in views:
                view.release()


_BLOBOPEN = hasattr(sqlite3.Connection, "blobopen")


class _SqliteStore(_Store):
    """sqlite3 files: ids and times in one query; blobs read one by one, only those asked for.

    Locators are ``(file, message id)``. The database is memory-mapped by SQLite
    (``mmap_size``), so a blob costs one copy instead of a read() per overflow page.
    """

    _MMAP_SIZE = 1 << 31  # SQLite's default ceiling (SQLITE_MAX_MMAP_SIZE) is just below

    def __init__(self, owner: BagReader, paths: list[Path]) -> None:
        self.owner = owner
        self.connections: list[sqlite3.Connection] = []
        try:
            for path in paths:
                con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
                self.connections.append(con)
                con.execute(f"PRAGMA mmap_size={self._MMAP_SIZE}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for con in self.connections:
            con.close()
        self.connections = []

    def index(self, topics: Sequence[str], msgtypes: dict[str, str], load: set[str]
              ) -> dict[str, TopicMessages]:
        found: dict[str, tuple[list[int], list[tuple[int, int]], list[Any] | None]] = {
            t: ([], [], [] if t in load else None) for t in topics}
        for f, con in enumerate(self.connections):
            ids = {tid: name for tid, name in con.execute("SELECT id, name FROM topics")
                   if name in found}
            for with_data in (True, False):
                chosen = [tid for tid, name in ids.items() if (name in load) == with_data]
                if not chosen:
                    continue
                query = (f"SELECT topic_id, id, timestamp{', data' if with_data else ''} "
                         f"FROM messages WHERE topic_id IN ({','.join('?' * len(chosen))}) "
                         f"ORDER BY timestamp, id")
                columns = list(zip(*con.execute(query, chosen).fetchall()))
                if not columns:
                    continue
                topic_ids, message_ids, stamps = (np.array(c, np.int64) for c in columns[:3])
                for tid in chosen:
                    rows = np.flatnonzero(topic_ids == tid)
                    times, locators, payloads = found[ids[tid]]
                    times.extend(stamps[rows].tolist())
                    locators.extend(zip([f] * len(rows), message_ids[rows].tolist()))
                    if payloads is not None:
                        payloads.extend(columns[3][i] for i in rows.tolist())
        return {t: _sorted_topic(t, msgtypes[t], 2, *found[t]) for t in topics}

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]], head: int | None
              ) -> Iterator[tuple[TopicMessages, int, Any]]:
        items = sorted((loc[0], loc[1], r, int(row))
                       for r, (tm, rows) in enumerate(requests)
                       for row, loc in zip(np.asarray(rows).tolist(),
                                           tm.locators[rows].tolist()))
        for f, message_id, r, row in items:
            con = self.connections[f]
            if _BLOBOPEN:  # Python >= 3.11: reads only the pages asked for
                with con.blobopen("messages", "data", message_id, readonly=True) as blob:
                    data = blob.read(-1 if head is None else head)
            else:
                query = ("SELECT data FROM messages WHERE id=?" if head is None else
                         f"SELECT substr(data, 1, {int(head)}) FROM messages WHERE id=?")
                data = con.execute(query, (message_id,)).fetchone()[0]
            yield requests[r][0], row, data


class _GenericStore(_Store):
    """Any bag rosbags reads (e.g. message-compressed): one pass of ``messages`` per call.

    Rows are numbered in the order rosbags yields them; locators are unused.
    """

    def __init__(self, owner: BagReader) -> None:
        self.owner = owner

    def index(self, topics: Sequence[str], msgtypes: dict[str, str], load: set[str]
              ) -> dict[str, TopicMessages]:
        times: dict[str, list[int]] = {t: [] for t in topics}
        payloads: dict[str, list[Any]] = {t: [] for t in topics if t in load}
        for topic, _, log_ns, raw in self.owner.messages(topics):
            times[topic].append(log_ns)
            if topic in payloads:
                payloads[topic].append(raw)
        out = {}
        for t in topics:
            try:
                out[t] = TopicMessages(t, msgtypes[t], np.asarray(times[t], np.int64),
                                       payloads.get(t))
            except OverflowError:
                bad = next(x for x in times[t] if not -1 << 63 <= x < 1 << 63)
                raise BagError(f"bag {self.owner.path} is damaged: a message on {t} has log "
                               f"time {bad}, outside int64") from None
        return out

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]], head: int | None
              ) -> Iterator[tuple[TopicMessages, int, Any]]:
        wanted = {tm.topic: (tm, set(np.asarray(rows).tolist())) for tm, rows in requests}
        counters = dict.fromkeys(wanted, 0)
        for topic, _, _, raw in self.owner.messages(list(wanted)):
            row = counters[topic]
            counters[topic] += 1
            tm, rows = wanted[topic]
            if row in rows:
                yield tm, row, raw if head is None else raw[:head]


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
