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
from typing import Any, Collection, Iterable, Iterator, Sequence
import zlib

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import DECOMPRESSORS, McapReader, McapWriter
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader, Sqlite3Writer
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.store import Typestore

from vla_policy_node.config import package_share_dir

logger = logging.getLogger(__name__)

#: custom_data keys of our episodes (metadata.yaml), also written as topics.
META_INSTRUCTION = "vla.instruction"
META_SUCCESS = "vla.success"
META_EPISODE = "vla.episode"
#: Where the recorded actions come from (``leader`` or ``commands``; see DataSpec).
META_ACTION_SOURCE = "vla.action_source"

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
    # need no more types than these share one store (see BagReader._register_types).
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
    #: True: the topics come from the storage files themselves (no metadata.yaml, or an mcap
    #: file without its footer), not from metadata.yaml; rosbags cannot read such a bag.
    scan: bool = False


def _read_metadata(bag: Path, typestore: Typestore) -> _Metadata | None:
    """metadata.yaml of a plain bag (mcap/sqlite3, CDR, no compression, known types).

    None for anything else, so that rosbags opens (and judges) the bag. rosbags parses the
    file with pure-Python ruamel.yaml (~7 ms, as much as the rest of opening); PyYAML's C
    loader takes 0.5 ms. An mcap file without its footer (cut short) gives a ``scan``
    result: only ``custom_data`` comes from the yaml, the rest from scanning the file.
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
        custom = {str(k): str(v) for k, v in (info.get("custom_data") or {}).items()}
        if info["storage_identifier"] == "mcap" and not all(map(_mcap_looks_whole, paths)):
            return _Metadata("mcap", paths, BagContents(bag, {}, custom), scan=True)
        topics: dict[str, TopicInfo] = {}
        for entry in info["topics_with_message_count"]:
            meta = entry["topic_metadata"]
            if meta["serialization_format"] != "cdr" or meta["type"] not in (
                    typestore.fielddefs):
                return None
            topic = topics.setdefault(meta["name"], TopicInfo(meta["name"], meta["type"], 0))
            topic.count += int(entry["message_count"])
        count = int(info["message_count"])
        start = int(info["starting_time"]["nanoseconds_since_epoch"])
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

    Use as a context manager. Plain bags (mcap or sqlite3 with CDR messages of known types, no
    compression) are read without ``rosbags``: metadata.yaml through PyYAML and the storage
    through :meth:`index` and :meth:`fetch`. ``rosbags`` opens everything else, and serves
    :meth:`messages`.

    Interrupted recordings (``ros2 bag record`` or ``vla-record`` killed) are read from their
    storage files: a directory without ``metadata.yaml`` through its .db3 or .mcap files (in
    split order), an mcap file without its footer up to its last complete record, and a
    sqlite3 file with its write-ahead log. What was lost is said in :attr:`warnings` (and
    logged).
    """

    def __init__(self, path: str | os.PathLike, typestore: Typestore | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        #: What is wrong with the bag but did not stop reading it (e.g. data lost at the end).
        self.warnings: list[str] = []
        self.typestore = typestore or _shared_typestore()
        self._own_typestore = typestore is not None
        self._store: _Store | None = None
        self._contents: BagContents | None = None
        self._reader: Reader | None = None
        self._target = self.path
        self._miscounted: set[str] = set()
        try:
            if self.path.is_dir() and (self.path / "metadata.yaml").is_file():
                self._metadata = _read_metadata(self.path, self.typestore)
                if self._metadata is not None and self._metadata.scan:
                    self._metadata = self._scan_storage(self._metadata.paths,
                                                        self._metadata.contents.custom_data)
            else:
                files = [self.path] if self.path.is_file() else self._storage_files()
                self._metadata = self._scan_storage(files, {})
                self._target = files[0]
            if self._metadata is None:
                self._open_rosbags()
            else:
                self._contents = self._metadata.contents
        except BaseException:
            self.close()
            raise

    def _warn(self, message: str) -> None:
        logger.warning("%s: %s", self.path, message)
        self.warnings.append(message)

    def _storage_files(self) -> list[Path]:
        """The storage files of a bag directory without metadata.yaml, in split order."""
        def split_order(path: Path) -> tuple[str, int, str]:
            stem, _, number = path.stem.rpartition("_")
            return (stem, int(number), "") if number.isdigit() else (path.stem, -1, path.name)

        mcap = sorted(self.path.glob("*.mcap"), key=split_order)
        db3 = sorted(self.path.glob("*.db3"), key=split_order)
        if (not mcap and not db3) or (mcap and db3):
            raise BagError(f"{self.path}: no metadata.yaml, and {len(mcap)} .mcap and "
                           f"{len(db3)} .db3 files: not one bag")
        files = mcap or db3
        self._warn(f"no metadata.yaml (recording interrupted?): read "
                   f"{', '.join(p.name for p in files)} directly")
        return files

    def _scan_storage(self, files: list[Path], custom: dict[str, str]) -> _Metadata | None:
        """Contents of ``files`` from the files themselves; None: rosbags reads them.

        sqlite3 files always (a write-ahead log is read too; rosbags ignores it), mcap files
        unless a single whole one (rosbags reads its summary, we would scan the whole file).
        """
        kinds = {p.suffix for p in files}
        with self._storage_errors():
            if kinds == {".db3"}:
                store: _Store = _SqliteStore(self, files)
            elif kinds == {".mcap"} and (len(files) > 1 or not _mcap_looks_whole(files[0])):
                store = _McapStore(self, files, recover=True)
            else:
                return None
            self._store = store
            topics, start, end, stored, definitions = store.catalog()
        for message in store.warnings:
            self._warn(message)
        if kinds == {".db3"} and not any(t.count for t in topics.values()):
            raise BagError(f"bag {self.path}: no message in {', '.join(p.name for p in files)} "
                           f"(a recording interrupted before its first commit? vla-record "
                           f"commits a sqlite3 episode only when it stops)")
        self._register_types(definitions)
        return _Metadata("mcap" if kinds == {".mcap"} else "sqlite3", files, BagContents(
            self.path, topics, {**stored, **custom}, start, end), scan=True)

    def _open_rosbags(self) -> Reader:
        if self._reader is None:
            try:
                reader = Reader(self._target)
                reader.open()
            except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds: a bad bag
                raise BagError(
                    f"cannot open bag {self.path}: {type(exc).__name__}: {exc}") from exc
            self._reader = reader
            self._register_types(
                (c.msgtype, "ros2msg" if c.msgdef.format.name == "MSG" else "", c.msgdef.data)
                for c in reader.connections)
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

    def _register_types(self, definitions: Iterable[tuple[str, str, str]]) -> None:
        """Register the ``(msgtype, encoding, text)`` definitions of types the store lacks.

        Only ``ros2msg`` text (a type and its dependencies) is parsed; a definition that does
        not parse only loses its topics (deserializing them fails).
        """
        known = set(self.typestore.fielddefs)
        types: dict[str, Any] = {}
        for msgtype, encoding, text in definitions:
            if msgtype in known or encoding != "ros2msg" or not text:
                continue
            try:
                types.update(get_types_from_msg(text, msgtype))
            except Exception as exc:  # noqa: BLE001 - an odd definition only loses that topic
                logger.warning("%s: cannot parse the definition of %s: %s", self.path,
                               msgtype, exc)
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
        if self._metadata is not None and self._metadata.scan:
            yield from self._stored_messages(topics)
            return
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

    def _stored_messages(self, topics: Sequence[str], batch: int = 256
                         ) -> Iterator[tuple[str, str, int, bytes]]:
        """:meth:`messages` through :meth:`index` and :meth:`fetch` (rosbags cannot read it)."""
        index = [tm for tm in self.index(topics).values() if len(tm)]
        if not index:
            return
        times = np.concatenate([tm.log_ns for tm in index])
        which = np.concatenate([np.full(len(tm), i) for i, tm in enumerate(index)])
        rows = np.concatenate([np.arange(len(tm)) for tm in index])
        locators = np.concatenate([tm.locators for tm in index])
        # Log time, ties in storage order (the locators' order).
        order = np.lexsort((*locators.T[::-1], times))
        for first in range(0, len(order), batch):
            chosen = order[first:first + batch]
            requests = [(index[i], rows[chosen[which[chosen] == i]])
                        for i in np.unique(which[chosen]).tolist()]
            got = {(tm.topic, row): bytes(raw) for tm, row, raw in self.fetch(requests)}
            for k in chosen.tolist():
                tm = index[which[k]]
                yield tm.topic, tm.msgtype, int(times[k]), got[tm.topic, int(rows[k])]

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
        with self._storage_errors():
            self._store = self._store or self._open_store()
            index = self._store.index(wanted, msgtypes, set(load))
        if self._metadata is not None and not self._metadata.scan:
            for topic, messages in index.items():
                listed = self.contents().topics[topic].count
                if len(messages) != listed and topic not in self._miscounted:
                    self._miscounted.add(topic)
                    self._warn(f"metadata.yaml lists {listed} messages on {topic}, the "
                               f"storage holds {len(messages)} (read what is stored)")
        return index

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
        with self._storage_errors():
            store = self._store = self._store or self._open_store()
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
            self._store = _McapStore(self, paths, recover=self._metadata is not None
                                     and self._metadata.scan)
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

    warnings: list[str]  # what a catalog found wrong but could read past

    def index(self, topics: Sequence[str], msgtypes: dict[str, str], load: set[str]
              ) -> dict[str, TopicMessages]:
        raise NotImplementedError

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]], head: int | None
              ) -> Iterator[tuple[TopicMessages, int, Any]]:
        raise NotImplementedError

    def catalog(self) -> tuple[dict[str, TopicInfo], int, int, dict[str, str],
                               list[tuple[str, str, str]]]:
        """What metadata.yaml would say, from the files: topics, start and end (ns, as
        :class:`BagContents`), custom data, and the ``(msgtype, encoding, text)`` message
        definitions stored with them."""
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
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 1, 2, 3, 4, 5, 6
_OP_METADATA, _OP_DATA_END = 0x0C, 0x0F


def _strings(buf: Any, pos: int, end: int, count: int | None = None) -> tuple[list[str], int]:
    """``count`` mcap strings (uint32 length, UTF-8) from ``pos`` (None: all up to ``end``),
    and the offset after them. Raises ValueError where one runs past ``end``."""
    out: list[str] = []
    while len(out) < count if count is not None else pos < end:
        if pos + 4 > end:
            raise ValueError(f"string at {pos} runs past its record")
        (length,) = struct.unpack_from("<I", buf, pos)
        if pos + 4 + length > end:
            raise ValueError(f"string at {pos} runs past its record")
        out.append(bytes(buf[pos + 4:pos + 4 + length]).decode(errors="replace"))
        pos += 4 + length
    return out, pos


def _time_range(spans: list[tuple[int, int]]) -> tuple[int, int]:
    """``BagContents.start_ns, end_ns`` of (first, last) log times: end is last + 1 (as
    rosbags reports it), both 0 without messages."""
    if not spans:
        return 0, 0
    return min(a for a, _ in spans), max(b for _, b in spans) + 1


class _Span:
    """Stands in for a topic's list of log times in a catalog scan: counts, keeps the range."""

    __slots__ = ("count", "low", "high")

    def __init__(self) -> None:
        self.count, self.low, self.high = 0, 1 << 64, -1

    def append(self, log_ns: int) -> None:
        self.count += 1
        self.low = min(self.low, log_ns)
        self.high = max(self.high, log_ns)


class _Discard:
    """Stands in for a topic's list of locators in a catalog scan."""

    def append(self, _: Any) -> None:
        pass


@dataclass
class _Catalog:
    """Schemas and channels met by a catalog scan, and the ``rosbag2`` metadata record."""

    schemas: dict[tuple[int, int], tuple[str, str, str]] = field(default_factory=dict)
    channels: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)


class _McapStore(_Store):
    """mcap files, memory-mapped: messages in uncompressed chunks are never copied.

    Locators are ``(file, chunk, start, end)``: ``chunk`` -1 means ``start:end`` are offsets in
    the mapped file, otherwise offsets in that (compressed) chunk's decompressed records.
    """

    def __init__(self, owner: BagReader, paths: list[Path], recover: bool = False) -> None:
        """``recover``: read a file without footer (a killed recording) up to its last
        complete record, instead of failing on it."""
        self.owner = owner
        self.paths = paths
        self.recover = recover
        self.maps: list[mmap.mmap] = []
        self.chunks: list[tuple[int, int, int, str, int, int]] = []
        self._cached: tuple[int, bytes] | None = None
        self.ends: dict[int, int] = {}  # file -> end of its readable part, for cut files
        self.warnings: list[str] = []   # what the cut files lost
        self._catalog: _Catalog | None = None
        try:
            for path in paths:
                with open(path, "rb") as f:
                    if os.fstat(f.fileno()).st_size == 0:
                        raise BagError(f"bag {owner.path}: {path.name} is empty (the recording "
                                       f"was interrupted before anything was written?)")
                    self.maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._cached = None
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:
                pass  # a view is still alive somewhere: the map closes when it is freed
        self.maps = []

    def _damaged(self, f: int, what: str) -> BagError:
        error = BagError(f"bag {self.owner.path} is damaged: {self.paths[f].name}: {what}")
        error.what = what  # type: ignore[attr-defined] - for _readable_end
        return error

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
            if self._summary_intact(f, mm, data_end, summary_end):
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

    def _summary_intact(self, f: int, mm: mmap.mmap, start: int, footer: int) -> bool:
        """False (and a warning) where the footer's summary CRC does not match.

        The summary only duplicates what the data section says (channels); a damaged one is
        left out, so that a flipped channel id in it cannot send one topic's messages to
        another, and the data section is read as a file without summary.
        """
        if start >= footer:
            return True
        (crc,) = struct.unpack_from("<I", mm, footer + 25)
        if not crc or zlib.crc32(mm[start:footer + 25]) == crc:
            return True
        self.owner._warn(f"{self.paths[f].name}: the summary section is damaged (checksum "
                         f"mismatch): read the data section alone")
        return False

    def _sections(self, f: int, mm: mmap.mmap) -> tuple[int, int, int]:
        """Offsets where the data section starts and ends, and where the summary ends.

        A file without footer ends its data section at its last complete record (found once,
        see :meth:`_readable_end`) when recovering, and is damaged otherwise.
        """
        size = len(mm)
        magic = len(_MCAP_MAGIC)
        if mm[:magic] != _MCAP_MAGIC[:min(size, magic)]:
            raise self._damaged(f, "file magic is invalid (not an mcap file)")
        op, header_length = _RECORD.unpack_from(mm, magic) if size >= magic + 9 else (0, 0)
        data_start = magic + 9 + header_length
        if op != _OP_HEADER or data_start > size:
            raise self._damaged(f, f"cut inside its header after {size} bytes (the recording "
                                   f"was interrupted before anything was written?)")
        if f in self.ends:
            return data_start, self.ends[f], self.ends[f]
        footer = size - magic - 29
        if footer < data_start or mm[footer] != _OP_FOOTER or mm[size - magic:] != _MCAP_MAGIC:
            if not self.recover:
                raise self._damaged(f, "no mcap footer (file end magic is invalid)")
            self.ends[f] = self._readable_end(f, mm, data_start)
            return data_start, self.ends[f], self.ends[f]
        (summary_start,) = struct.unpack_from("<Q", mm, footer + 9)
        if summary_start and not data_start <= summary_start <= footer:
            raise self._damaged(f, f"summary offset {summary_start} outside the file")
        return data_start, summary_start or footer, footer

    def _readable_end(self, f: int, mm: mmap.mmap, pos: int) -> int:
        """End of the last complete record of a file without footer, from ``pos`` (the data
        section's start); what follows is lost, and said in :attr:`warnings`.

        A record cut by the end of the file, zero bytes where a record should start, or a
        chunk that does not check out (cut compressed data, checksum) ends what is read.
        """
        size, name = len(mm), self.paths[f].name
        reason, op = "", 0
        view = memoryview(mm)
        try:
            while pos < size:
                if pos + 9 > size:
                    reason = f"a record header cut after {size - pos} of 9 bytes"
                    break
                op, length = _RECORD.unpack_from(mm, pos)
                if op == 0:
                    reason = f"zero bytes instead of a record at offset {pos}"
                    break
                if pos + 9 + length > size:
                    reason = (f"a record (opcode 0x{op:02x}) cut after {size - pos} of "
                              f"{9 + length} bytes")
                    break
                if op == _OP_CHUNK:
                    try:
                        self._chunk(f, mm, view, pos + 9, pos + 9 + length, {}, {})
                    except BagError as exc:
                        reason = getattr(exc, "what", str(exc))
                        break
                pos += 9 + length
                if op == _OP_DATA_END:
                    break
        finally:
            self.chunks, self._cached = [], None
            view.release()
        if op == _OP_DATA_END and not reason:
            self.warnings.append(f"{name} has no mcap footer: writing its summary was "
                                 f"interrupted (every message is there)")
        else:
            self.warnings.append(
                f"{name}: recording interrupted: read its first {pos} bytes, lost the last "
                f"{size - pos}" + (f" ({reason})" if reason else
                                   " (the file ends after a complete record)")
                + " and what the recorder had not written yet")
        return pos

    def catalog(self) -> tuple[dict[str, TopicInfo], int, int, dict[str, str],
                               list[tuple[str, str, str]]]:
        for f, mm in enumerate(self.maps):
            self._sections(f, mm)  # first: a cut file's readable end (validating its chunks)
        found: dict[str, Any] = {}
        catalog = self._catalog = _Catalog()
        try:
            for f, mm in enumerate(self.maps):
                data_start, data_end, _ = self._sections(f, mm)
                self._scan(f, mm, data_start, data_end, found, {}, summary=False)
        finally:
            self._catalog, self.chunks, self._cached = None, [], None
        topics: dict[str, TopicInfo] = {}
        definitions: list[tuple[str, str, str]] = []
        spans: list[tuple[int, int]] = []
        for topic, (span, _, _) in found.items():
            f, schema_id, encoding = catalog.channels[topic][0]
            schema = catalog.schemas.get((f, schema_id))
            if schema is None or encoding != "cdr":
                why = f"{encoding} messages" if schema else f"no schema {schema_id}"
                self.warnings.append(f"{self.paths[f].name}: topic {topic} left out: {why}")
                continue
            if span.high >= 1 << 63:
                raise self._damaged(f, f"a message on {topic} has log time {span.high} >= "
                                       f"2**63")
            topics[topic] = TopicInfo(topic, schema[0], span.count)
            definitions.append((schema[0], schema[1], schema[2]))
            if span.count:
                spans.append((span.low, span.high))
        if self.ends and not spans:
            raise BagError(f"bag {self.owner.path}: the recording was interrupted before any "
                           f"message was completely written ({'; '.join(self.warnings)})")
        return topics, *_time_range(spans), catalog.custom, definitions

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
            elif self._catalog is not None:
                self._catalog_record(f, mm, op, body, end)
            pos = end

    def _channel(self, buf: Any, body: int, end: int, f: int, found: dict[str, Any],
                 wanted: dict[int, Any]) -> None:
        if end - body < 8:
            raise self._damaged(f, f"channel record of {end - body} bytes")
        cid, schema_id, length = _CHANNEL.unpack_from(buf, body)
        if body + 8 + length > end:
            raise self._damaged(f, f"channel record {cid}: topic runs past the record")
        topic = bytes(buf[body + 8:body + 8 + length]).decode(errors="replace")
        if self._catalog is not None:  # every channel counts: a _Span per topic
            try:
                [encoding], _ = _strings(buf, body + 8 + length, end, 1)
            except ValueError as exc:
                raise self._damaged(f, f"channel record {cid}: {exc}") from None
            self._catalog.channels.setdefault(topic, []).append((f, schema_id, encoding))
            found.setdefault(topic, (_Span(), _Discard(), None))
        if topic in found:
            wanted[cid] = found[topic]

    def _catalog_record(self, f: int, buf: Any, op: int, body: int, end: int) -> None:
        """Schemas (types and definitions) and the ``rosbag2`` metadata (custom data)."""
        assert self._catalog is not None
        try:
            if op == _OP_SCHEMA:
                if end - body < 2:
                    raise ValueError(f"{end - body} bytes")
                (schema_id,) = struct.unpack_from("<H", buf, body)
                [name, encoding], pos = _strings(buf, body + 2, end, 2)
                (length,) = struct.unpack_from("<I", buf, pos) if pos + 4 <= end else (-1,)
                if not 0 <= length <= end - pos - 4:
                    raise ValueError("definition runs past the record")
                text = bytes(buf[pos + 4:pos + 4 + length]).decode(errors="replace")
                self._catalog.schemas[f, schema_id] = (name, encoding, text)
            elif op == _OP_METADATA:  # written when a recording stops: rarely in a cut file
                [name], pos = _strings(buf, body, end, 1)
                if name == "rosbag2" and pos + 4 <= end:
                    (length,) = struct.unpack_from("<I", buf, pos)
                    items, _ = _strings(buf, pos + 4, min(end, pos + 4 + length))
                    info = yaml.load(dict(zip(items[::2], items[1::2])).get(
                        "serialized_metadata", ""), Loader=getattr(
                            yaml, "CSafeLoader", yaml.SafeLoader))
                    custom = info["rosbag2_bagfile_information"].get("custom_data") or {}
                    self._catalog.custom = {str(k): str(v) for k, v in custom.items()}
        except ValueError as exc:
            if op == _OP_SCHEMA:
                raise self._damaged(f, f"schema record at {body - 9}: {exc}") from None
        except (yaml.YAMLError, TypeError, KeyError, AttributeError):
            pass  # the metadata is a bonus: without it, no custom data

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
            elif self._catalog is not None:
                self._catalog_record(f, buf, op, pos + 9, rec_end)
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

    Locators are ``(file, message id, digest seed, digest)`` (see :meth:`index`). A file's
    tables get a ``PRAGMA quick_check`` (see :meth:`_check`) before it is indexed, and
    messages with a digest (:data:`DIGEST_TABLE`, our writer's) are verified when read
    whole. The database is memory-mapped by SQLite (``mmap_size``), so a blob costs one
    copy instead of a read() per overflow page.
    """

    _MMAP_SIZE = 1 << 31  # SQLite's default ceiling (SQLITE_MAX_MMAP_SIZE) is just below

    def __init__(self, owner: BagReader, paths: list[Path]) -> None:
        self.owner = owner
        self.paths = paths
        self.connections: list[sqlite3.Connection] = []
        self.warnings: list[str] = []
        try:
            for path in paths:
                con = self._connect(path)
                self.connections.append(con)
                con.execute(f"PRAGMA mmap_size={self._MMAP_SIZE}")
        except BaseException:
            self.close()
            raise

    def _connect(self, path: Path) -> sqlite3.Connection:
        """A read-only connection that sees what was committed, the write-ahead log included.

        ``mode=ro`` reads a WAL database's -wal file through its -shm index (which SQLite
        creates or updates: the one file of the bag it writes to; rosbags' ``immutable=1``
        ignores the log, and so the messages of a killed WAL recording). Where that cannot
        be (a read-only directory), a database with no log to apply is opened immutable.
        """
        uri = path.resolve().as_uri()
        try:
            con = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            try:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                con.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError):  # "file is not a database", ...
                raise BagError(f"bag {self.owner.path} is damaged: {path.name}: "
                               f"{type(exc).__name__}: {exc}") from None
            journal, wal = (path.with_name(path.name + suffix) for suffix in ("-journal", "-wal"))
            if journal.is_file() and journal.stat().st_size:
                raise BagError(
                    f"bag {self.owner.path}: {path.name}: the recording was interrupted inside "
                    f"a transaction ({exc}): SQLite must first roll back {journal.name}, "
                    f"which writes to the file; open a copy of the bag once with sqlite3 to "
                    f"do so (vla-record commits a sqlite3 episode only when it stops: a "
                    f"killed one holds nothing)") from None
            if wal.is_file() and wal.stat().st_size:
                raise BagError(
                    f"bag {self.owner.path}: {path.name}: cannot read its write-ahead log "
                    f"{wal.name} ({exc}): it needs a writable {path.name}-shm or a writable "
                    f"directory to create one; copy the bag") from None
            con = sqlite3.connect(f"{uri}?immutable=1", uri=True)  # WAL mode, read-only dir
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:
            self.warnings.append(f"{path.name}: read with its write-ahead log {wal.name}, "
                                 f"never checkpointed (recording interrupted?)")
        return con

    def catalog(self) -> tuple[dict[str, TopicInfo], int, int, dict[str, str],
                               list[tuple[str, str, str]]]:
        topics: dict[str, TopicInfo] = {}
        definitions: list[tuple[str, str, str]] = []
        spans: list[tuple[int, int]] = []
        for f, con in enumerate(self.connections):
            tables = {name for (name,) in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            missing = sorted({"topics", "messages"} - tables)
            if missing:
                raise BagError(
                    f"bag {self.owner.path}: {self.paths[f].name} has no {' or '.join(missing)} "
                    f"table: not a rosbag2 database, or its recording was interrupted before "
                    f"it was set up")
            counts = {tid: (n, a, b) for tid, n, a, b in con.execute(
                "SELECT topic_id, COUNT(*), MIN(timestamp), MAX(timestamp) FROM messages "
                "GROUP BY topic_id")}
            for tid, name, msgtype, encoding in con.execute(
                    "SELECT id, name, type, serialization_format FROM topics ORDER BY id"):
                if encoding != "cdr":
                    self.warnings.append(f"{self.paths[f].name}: topic {name} left out: "
                                         f"{encoding} messages")
                    continue
                n, a, b = counts.get(tid, (0, 0, 0))
                topics.setdefault(name, TopicInfo(name, msgtype, 0)).count += n
                if n:
                    spans.append((a, b))
            if "message_definitions" in tables:  # rosbag2 schema 4 (Iron and later)
                definitions += con.execute(
                    "SELECT topic_type, encoding, encoded_message_definition "
                    "FROM message_definitions").fetchall()
        return topics, *_time_range(spans), {}, definitions

    def close(self) -> None:
        for con in self.connections:
            con.close()
        self.connections = []

    def _check(self, f: int, con: sqlite3.Connection) -> set[str]:
        """``PRAGMA quick_check`` of the tables of file ``f`` but ``messages``; returns them.

        Checking ``messages`` would walk every blob's overflow pages (~0.3 ms per MB, a
        third of a conversion); its rows are read by the index query (SQLite reports a
        malformed b-tree there) and its data is checked against :data:`DIGEST_TABLE`.
        """
        tables = {name for (name,) in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if sqlite3.sqlite_version_info >= (3, 33, 0):  # quick_check(TABLE)
            for table in sorted(tables - {"messages"}):
                quoted = table.replace("'", "''")
                problems = [row[0] for row in con.execute(f"PRAGMA quick_check('{quoted}')")]
                if problems != ["ok"]:
                    raise BagError(
                        f"bag {self.owner.path} is damaged: {self.paths[f].name}: SQLite "
                        f"integrity check of {table}: {'; '.join(map(str, problems[:5]))}")
        return tables

    def _damaged(self, f: int, message_id: int, what: str) -> BagError:
        return BagError(f"bag {self.owner.path} is damaged: {self.paths[f].name}: message "
                        f"{message_id}: {what}")

    def index(self, topics: Sequence[str], msgtypes: dict[str, str], load: set[str]
              ) -> dict[str, TopicMessages]:
        """Locators are ``(file, message id, digest seed, digest)``; digest -1: none stored
        (a bag from ``ros2 bag record``)."""
        found: dict[str, tuple[list[int], list[tuple[int, ...]], list[Any] | None]] = {
            t: ([], [], [] if t in load else None) for t in topics}
        for f, con in enumerate(self.connections):
            digests = DIGEST_TABLE in self._check(f, con)
            ids = {tid: name for tid, name in con.execute("SELECT id, name FROM topics")
                   if name in found}
            for with_data in (True, False):
                chosen = [tid for tid, name in ids.items() if (name in load) == with_data]
                if not chosen:
                    continue
                query = (f"SELECT m.topic_id, m.id, m.timestamp, "
                         f"{'COALESCE(c.crc, -1)' if digests else '-1'}"
                         f"{', m.data' if with_data else ''} FROM messages m "
                         f"{f'LEFT JOIN {DIGEST_TABLE} c ON c.id = m.id ' if digests else ''}"
                         f"WHERE m.topic_id IN ({','.join('?' * len(chosen))}) "
                         f"ORDER BY m.timestamp, m.id")
                columns = list(zip(*con.execute(query, chosen).fetchall()))
                if not columns:
                    continue
                topic_ids, message_ids, stamps, crcs = (
                    np.array(c, np.int64) for c in columns[:4])
                seeds = np.zeros(len(crcs), np.int64)
                for i in np.flatnonzero(crcs >= 0).tolist():
                    seeds[i] = _message_crc_seed(int(topic_ids[i]), int(stamps[i]))
                    if with_data and zlib.crc32(columns[4][i], int(seeds[i])) != crcs[i]:
                        raise self._damaged(f, int(message_ids[i]), "checksum mismatch")
                for tid in chosen:
                    rows = np.flatnonzero(topic_ids == tid)
                    times, locators, payloads = found[ids[tid]]
                    times.extend(stamps[rows].tolist())
                    locators.extend(zip([f] * len(rows), message_ids[rows].tolist(),
                                        seeds[rows].tolist(), crcs[rows].tolist()))
                    if payloads is not None:
                        payloads.extend(columns[4][i] for i in rows.tolist())
        return {t: _sorted_topic(t, msgtypes[t], 4, *found[t]) for t in topics}

    def fetch(self, requests: Sequence[tuple[TopicMessages, np.ndarray]], head: int | None
              ) -> Iterator[tuple[TopicMessages, int, Any]]:
        """Whole messages are checked against their digest; ``head`` reads cannot be."""
        items = sorted((*loc, r, int(row))
                       for r, (tm, rows) in enumerate(requests)
                       for row, loc in zip(np.asarray(rows).tolist(),
                                           tm.locators[rows].tolist()))
        for f, message_id, seed, crc, r, row in items:
            con = self.connections[f]
            if _BLOBOPEN:  # Python >= 3.11: reads only the pages asked for
                with con.blobopen("messages", "data", message_id, readonly=True) as blob:
                    data = blob.read(-1 if head is None else head)
            else:
                query = ("SELECT data FROM messages WHERE id=?" if head is None else
                         f"SELECT substr(data, 1, {int(head)}) FROM messages WHERE id=?")
                data = con.execute(query, (message_id,)).fetchone()[0]
            if head is None and crc >= 0 and zlib.crc32(data, seed) != crc:
                raise self._damaged(f, message_id, "checksum mismatch")
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


#: Per-message checksums of the sqlite3 bags we write (rosbag2 ignores extra tables).
DIGEST_TABLE = "vla_message_crc"


def _message_crc_seed(topic_id: int, log_ns: int) -> int:
    """CRC-32 of a sqlite3 message's topic id and log time: the start value of its digest,
    so that the digest covers where and when the message is, not only its bytes."""
    return zlib.crc32(struct.pack("<qq", topic_id, log_ns))


class _CrcMcapWriter(McapWriter):
    """rosbags' mcap writer, with chunk CRCs and the summary CRC filled in.

    rosbags writes 0 (not computed) into both, so a flipped bit in a recorded image would
    convert as good data. The chunk CRC covers every message, schema and channel (rosbags
    puts them all in chunks) and is written as the chunk is, so a killed recording keeps
    the CRCs of its complete chunks. The data section CRC stays 0 (it would cost a pass
    over the file at every read; the chunks hold everything we read from the data section).
    """

    def close_chunk(self) -> None:
        with self.chunk.bio.getbuffer() as records:
            crc = zlib.crc32(records)
        start = self.bio.tell()
        super().close_chunk()
        end = self.bio.tell()
        # Chunk record: opcode, length, start time, end time, uncompressed size, CRC.
        self.bio.seek(start + 9 + 24)
        self.bio.write(crc.to_bytes(4, "little"))
        self.bio.seek(end)

    def close(self, version: int, metadata: str) -> None:
        super().close(version, metadata)
        _write_summary_crc(self.path)


def _write_summary_crc(path: Path) -> None:
    """Fill in the footer's summary CRC of a finished mcap file (all bytes from the summary
    start to the footer's CRC field)."""
    with open(path, "r+b") as f:
        footer = f.seek(0, os.SEEK_END) - len(_MCAP_MAGIC) - 29
        f.seek(footer)
        record = f.read(29)
        (summary_start,) = struct.unpack_from("<Q", record, 9)
        if record[0] != _OP_FOOTER or not summary_start:
            return
        f.seek(summary_start)
        crc = zlib.crc32(f.read(footer + 25 - summary_start))
        f.seek(footer + 25)
        f.write(crc.to_bytes(4, "little"))


class _DigestSqlite3Writer(Sqlite3Writer):
    """rosbags' sqlite3 writer plus a CRC-32 per message (:data:`DIGEST_TABLE`): SQLite
    keeps no checksums of its pages, so a flipped bit in a blob is otherwise invisible."""

    def __init__(self, path: Path, compression: Any) -> None:
        super().__init__(path, compression)
        self.conn.execute(f"CREATE TABLE {DIGEST_TABLE}(id INTEGER PRIMARY KEY, "
                          f"crc INTEGER NOT NULL)")

    def write(self, connection: Any, timestamp: int, data: bytes | memoryview) -> None:
        super().write(connection, timestamp, data)
        crc = zlib.crc32(data, _message_crc_seed(connection.id, timestamp))
        self.cursor.execute(f"INSERT INTO {DIGEST_TABLE} VALUES(?, ?)",
                            (self.cursor.lastrowid, crc))


class _ChecksummedWriter(Writer):
    STORAGE_PLUGINS = {StoragePlugin.MCAP: _CrcMcapWriter,
                       StoragePlugin.SQLITE3: _DigestSqlite3Writer}


class BagWriter:
    """Write one rosbag2 episode (mcap or sqlite3) from serialized or rosbags messages.

    ``write_raw`` takes CDR bytes (e.g. from an rclpy subscription with ``raw=True``);
    ``write`` serializes a rosbags message. ``custom_data`` ends up in metadata.yaml on close.
    Every message is covered by a checksum that :class:`BagReader` verifies: mcap chunk
    CRCs (and the summary CRC), or a CRC-32 per message in sqlite3 (:data:`DIGEST_TABLE`).
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap",
                 typestore: Typestore | None = None) -> None:
        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be mcap or sqlite3, got {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self.typestore = typestore or make_typestore()
        self._writer = _ChecksummedWriter(self.path, version=9,
                                          storage_plugin=plugins[storage])
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
